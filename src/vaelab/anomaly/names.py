"""The names and defaults of vaelab's anomaly scores, importable without torch (the CLI's --help)."""

SCORE_NAMES = ("neg_elbo", "nll", "kl", "recon_mse", "recon_mae", "recon_1_minus_ssim", "latent_mahalanobis",
               "likelihood_ratio", "mean_image_distance", "nearest_neighbour_distance")
# Scores that need a reference of normal training images (`scores.NormalReference`).
REFERENCE_SCORES = ("latent_mahalanobis", "mean_image_distance", "nearest_neighbour_distance")
BASELINES = ("mean_image_distance", "nearest_neighbour_distance")  # no model involved
SCORE_DEFINITIONS = {
    "neg_elbo": "-ELBO: -E_q[log p(x|z)] + KL(q(z|x) || p(z)), nats (Kingma & Welling 2013)",
    "nll": "-L_K, the importance-weighted bound with K samples, nats (Burda et al. 2015)",
    "kl": "KL(q(z|x) || p(z)), nats",
    "recon_mse": "mean squared error of the reconstruction decode(E_q[z|x])",
    "recon_mae": "mean absolute error of the reconstruction",
    "recon_1_minus_ssim": "1 - SSIM of the reconstruction (Wang et al. 2004)",
    "latent_mahalanobis": "Mahalanobis distance of E_q[z|x] under a Gaussian fitted to the normal training codes",
    "likelihood_ratio": "-L_K in bits minus the PNG length in bits: input-complexity correction (Serra et al. 2020)",
    "mean_image_distance": "baseline, no model: L2 distance to the mean normal training image",
    "nearest_neighbour_distance": "baseline, no model: L2 distance to the nearest normal training image",
}
DEFAULT_IW_SAMPLES = 100  # K of nll = -L_K (the chest X-ray trial used -L_100)
DEFAULT_BOOTSTRAP = 1000  # resamples of each AUROC's interval
DEFAULT_MAPS = 16  # most anomalous split images mapped
