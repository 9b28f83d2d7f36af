"""No patient data in any output: DICOM files carrying known identifying values (names, IDs, dates,
institution, accession and study numbers, UIDs) go through train (with TensorBoard), eval, report,
reconstruct, the explorer's API and an error; no file written anywhere (run folder, outputs, the
decoded-image cache, the classifier cache) and nothing printed contains any of those values."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("nibabel")

from vaelab.cli import main  # noqa: E402
from vaelab.data.synthetic_scans import phantom, write_dicom_series, write_structured_report  # noqa: E402


def identity(p: int) -> dict[str, str]:
    """Identifying header values, unusual enough that a hit cannot be a coincidence."""
    return {
        "PatientName": f"Zyxwvut^Quentinella{p}", "PatientID": f"PIDQX93{p}", "PatientBirthDate": f"1944022{p}",
        "PatientAddress": f"{p}2 Glimmerwick Lane", "InstitutionName": "St Quxley Memorial Hospital",
        "InstitutionalDepartmentName": "Department of Plonkology", "AccessionNumber": f"ACCQ55{p}1",
        "StudyDescription": "THORAX ZORBLAT PROTOCOL", "SeriesDescription": f"ZORBLAT AXIAL {p}",
        "ReferringPhysicianName": "Fizzbang^Theodora", "OperatorsName": "Wumpus^Ophelia", "StudyID": f"STQ{p}77",
        "StationName": "SCANNERQX9", "DeviceSerialNumber": f"SNQ88{p}X", "StudyDate": f"2019110{p}",
        "OtherPatientIDs": f"OTHERQX{p}",
    }


def needles(root: Path) -> set[str]:
    """Every identifying value in the files under `root`, and the pieces a program might print on their own."""
    found: set[str] = set()
    for path in root.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword in [*identity(0), "SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID"]:
            if keyword in ds:
                value = str(ds.data_element(keyword).value)
                found.add(value)
                found.update(part for part in value.replace("^", " ").split() if len(part) >= 6)
                if keyword.endswith("Date"):
                    found.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")  # as an ISO date
    return {n.lower() for n in found if len(n) >= 6}


def leaks(folder: Path, values: set[str]) -> list[str]:
    """(file, value) for every value found in any file under `folder` (bytes, case-insensitive)."""
    hits = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = path.read_bytes().lower()
        hits += [f"{path}: {v}" for v in values if v.encode() in content]
    return hits


def test_no_identifying_header_value_reaches_any_output(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VAELAB_DATA", str(cache))
    scans = tmp_path / "scans"
    for p in range(3):
        write_dicom_series(scans / ("a" if p < 2 else "b") / f"case{p}", phantom((8, 16, 16), seed=p),
                           series=f"s{p}", identity=identity(p))
    write_structured_report(scans / "a" / "case0" / "report.dcm", identity(0))
    values = needles(scans)
    assert len(values) > 40 and len(leaks(scans, values)) > 40  # the search finds them where they are

    out = tmp_path / "outputs"
    run = out / "run"
    printed = []
    assert main(["train", "--dataset", "dicom", "--data-dir", str(scans), "--image-size", "16", "--hidden", "16",
                 "--latent-dim", "2", "--epochs", "2", "--batch-size", "2", "--tensorboard", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--iw-samples", "2"]) == 0
    assert main(["report", str(run)]) == 0
    series = scans / "a" / "case1"
    assert main(["reconstruct", str(run), "--images", str(series), "--out", str(out / "r.nii.gz")]) == 0
    assert main(["reconstruct", str(run), "--images", str(series), "--out", str(out / "r.png")]) == 0
    assert main(["reconstruct", str(run), "--images", str(series / "s1_002.dcm"), "--out", str(out / "one.png")]) == 0
    assert main(["sample", str(run), "-n", "4"]) == 0
    printed.append(capsys.readouterr())

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vaelab.explorer import create_app

    client = TestClient(create_app(run))
    pages = [client.get(url).text for url in ("/", "/api/meta", "/api/map", "/api/data/0")]

    # An error about a damaged file names it by its path relative to --data-dir, and nothing else.
    broken = tmp_path / "broken"
    shutil.copytree(scans, broken)
    victim = broken / "b" / "case2" / "s2_003.dcm"
    victim.write_bytes(victim.read_bytes()[:300])
    assert main(["train", "--dataset", "dicom", "--data-dir", str(broken), "--out", str(out / "never")]) != 0
    printed.append(capsys.readouterr())
    assert "b/case2/s2_003.dcm" in printed[-1].err and not (out / "never").exists()

    assert (run / "tensorboard").is_dir() and (out / "r.nii.gz").is_file() and (run / "report.html").is_file()
    assert list((cache / "decoded").glob("dicom-*.bin"))
    hits = leaks(out, values) + leaks(cache, values)
    text = "\n".join([p.out + p.err for p in printed] + pages).lower()
    hits += [f"printed or served: {v}" for v in values if v in text]
    assert hits == []
    # The report does not show where the scans are either.
    assert str(scans).lower().encode() not in (run / "report.html").read_bytes().lower()
    assert np.isfinite(np.asarray(__import__("nibabel").load(out / "r.nii.gz").get_fdata())).all()


def test_no_identifying_header_value_reaches_any_output_of_a_3d_run(tmp_path, monkeypatch, capsys):
    """The same search over a 3-D run (--dimensions 3 --arch conv3d): train with TensorBoard, eval,
    report, reconstruct to NIfTI and PNG, sample to NIfTI and PNG, the latent tools, and an error."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VAELAB_DATA", str(cache))
    scans = tmp_path / "scans"
    for p in range(3):
        write_dicom_series(scans / ("a" if p < 2 else "b") / f"case{p}", phantom((6, 12, 12), seed=p),
                           series=f"s{p}", identity=identity(p))
    write_structured_report(scans / "a" / "case0" / "report.dcm", identity(0))
    values = needles(scans)
    assert len(values) > 40

    out = tmp_path / "outputs"
    run = out / "run"
    printed = []
    assert main(["train", "--dataset", "dicom", "--data-dir", str(scans), "--dimensions", "3", "--volume-size",
                 "8,8,8", "--arch", "conv3d", "--hidden", "4,8", "--latent-dim", "2", "--epochs", "2",
                 "--batch-size", "1", "--tensorboard", "--out", str(run)]) == 0
    series = scans / "a" / "case1"
    for argv in (["eval", str(run), "--iw-samples", "2"], ["report", str(run)],
                 ["reconstruct", str(run), "--images", str(series), "--out", str(out / "r.nii.gz")],
                 ["reconstruct", str(run), "--images", str(series), "--out", str(out / "r.png")],
                 ["sample", str(run), "-n", "2", "--out", str(out / "s.nii.gz")], ["sample", str(run), "-n", "4"],
                 ["traverse", str(run)], ["manifold", str(run), "--steps", "3"]):
        assert main(argv) == 0, argv
    printed.append(capsys.readouterr())
    broken = tmp_path / "broken"
    shutil.copytree(scans, broken)
    victim = broken / "b" / "case2" / "s2_003.dcm"
    victim.write_bytes(victim.read_bytes()[:300])
    assert main(["train", "--dataset", "dicom", "--data-dir", str(broken), "--dimensions", "3", "--arch", "conv3d",
                 "--out", str(out / "never")]) != 0
    printed.append(capsys.readouterr())
    assert "b/case2/s2_003.dcm" in printed[-1].err and not (out / "never").exists()

    assert (run / "tensorboard").is_dir() and (out / "s.nii.gz").is_file() and (run / "report.html").is_file()
    assert list((cache / "decoded").glob("dicom-3d-*.bin"))
    hits = leaks(out, values) + leaks(cache, values)
    text = "\n".join(p.out + p.err for p in printed).lower()
    hits += [f"printed: {v}" for v in values if v in text]
    assert hits == []
    assert str(scans).lower().encode() not in (run / "report.html").read_bytes().lower()
    nib = __import__("nibabel")
    for name in ("r.nii.gz", "s.nii.gz"):  # geometry and intensities only: no description or other text
        header = nib.load(out / name).header
        assert not bytes(header["descrip"]).strip(b"\0") and not bytes(header["aux_file"]).strip(b"\0")
