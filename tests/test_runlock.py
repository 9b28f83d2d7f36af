"""One writer per run folder (vaelab.runlock): real processes hold and contend for `RUN/.lock`.

A holder is a real `python -m vaelab train --resume` process, frozen with SIGSTOP once it holds
the lock (so the contention is deterministic, not a race against its speed) and later SIGKILLed.
The references are: the run folder's bytes before a refused command (nothing may change, the lock
file included), the exact refusal line and exit code 4, and `metrics.jsonl` holding every epoch
exactly once after a refused writer, a killed holder and a resume that finishes the run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaelab import runlock
from vaelab.checkpoint import read_safetensors
from vaelab.cli import main
from vaelab.config import RunConfig
from vaelab.errors import RunInUseError
from vaelab.runlock import LOCK_FILE, lock_holder, run_lock, run_lock_for_output
from vaelab.runs import read_metrics

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--dataset", "mnist", "--batch-size", "16", "--hidden", "16", "--latent-dim", "2", "--threads", "1",
         "--seed", "4", "--quiet"]
IN_USE = re.compile(r"^vaelab: error: (?P<run>.+) is in use by another vaelab process \(pid (?P<pid>\d+), "
                    r"(?P<command>vaelab [a-z -]+), started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)$")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(REPO / "src"))
    env.pop("VAELAB_FAULT_INJECT", None)
    return env


def _vaelab(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vaelab", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_holder(run: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until the lock file names `proc` (it writes its pid right after locking)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        holder = lock_holder(run) if (run / LOCK_FILE).exists() else None
        if holder and holder.get("pid") == proc.pid:
            return
        time.sleep(0.01)
    raise AssertionError("the process never took the lock")


def _snapshot(run: Path) -> dict:
    return {p.relative_to(run): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(run.rglob("*"))}


def _trained(tmp_path: Path, fake_mnist: Path) -> Path:
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--data-dir", str(fake_mnist), "--epochs", "1", "--out", str(run)]) == 0
    return run


def _refused(capsys, argv: list[str], run: Path, holder_pid: int, command: str) -> None:
    capsys.readouterr()
    assert main(argv) == 4, argv
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    found = IN_USE.match(lines[0])
    assert found, lines[0]
    assert (found["run"], int(found["pid"]), found["command"]) == (str(run), holder_pid, command)


def test_a_second_writer_is_refused_and_a_killed_holders_lock_is_gone(tmp_path, capsys, fake_mnist):
    run = _trained(tmp_path, fake_mnist)
    epochs = 12
    holder = _vaelab("train", "--resume", str(run), "--epochs", str(epochs), "--quiet")
    try:
        _wait_for_holder(run, holder)
        holder.send_signal(signal.SIGSTOP)  # it holds the lock, frozen wherever it is
        before = _snapshot(run)

        # A second resume, a real process: one line, exit code 4, nothing changed.
        second = _vaelab("train", "--resume", str(run), "--epochs", str(epochs), "--quiet")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 4, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and IN_USE.match(lines[0]), lines
        assert IN_USE.match(lines[0])["pid"] == str(holder.pid)
        assert IN_USE.match(lines[0])["command"] == "vaelab train --resume"
        assert _snapshot(run) == before

        # Every other writer too (in this process: the lock is per open file, not per process).
        _refused(capsys, ["train", *SMALL, "--data-dir", str(fake_mnist), "--epochs", "1", "--out", str(run),
                          "--force"], run, holder.pid, "vaelab train --resume")
        _refused(capsys, ["eval", str(run), "--iw-samples", "2", "--no-fid", "--quiet"], run, holder.pid,
                 "vaelab train --resume")
        _refused(capsys, ["report", str(run)], run, holder.pid, "vaelab train --resume")
        _refused(capsys, ["export", str(run), "--format", "torchscript", "--part", "decoder"], run, holder.pid,
                 "vaelab train --resume")
        _refused(capsys, ["sample", str(run), "--num", "4"], run, holder.pid,  # default out: RUN/figures/
                 "vaelab train --resume")
        assert _snapshot(run) == before  # --force removed nothing, eval/report/export/sample wrote nothing

        # Readers that write elsewhere keep working while the run is held.
        assert main(["sample", str(run), "--out", str(tmp_path / "samples.png"), "--num", "4"]) == 0
        assert _snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # also ends a stopped process
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL

    # The OS dropped the dead holder's lock: it can be taken at once, and the run resumes to the end.
    with run_lock(run, "test") as locked:
        assert locked
    capsys.readouterr()
    # (--epochs again: the holder may have been frozen before it wrote its --epochs to config.json)
    assert main(["train", "--resume", str(run), "--epochs", str(epochs), "--quiet"]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))  # every epoch once, none twice
    assert [r["step"] for r in rows] == [7 * e for e in range(1, epochs + 1)]  # 108 images / 16 per batch
    assert RunConfig.load(run / "config.json").train.epochs == epochs


@pytest.mark.slow
def test_two_resumes_started_together_one_wins(tmp_path, fake_mnist):
    """No freezing here: two real resumes race; exactly one trains, the other is refused with 4."""
    run = _trained(tmp_path, fake_mnist)
    procs = [_vaelab("train", "--resume", str(run), "--epochs", "30", "--quiet") for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    # [0, 0] only if the first finished before the second reached its lock (then the second found
    # a finished run); either way the metrics hold each epoch once.
    assert codes in ([0, 4], [0, 0]), results
    for code, err in results:
        if code == 4:
            refused = err.strip().splitlines()
            assert len(refused) == 1 and IN_USE.match(refused[0]), refused
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 31))


@pytest.mark.slow
def test_readers_never_see_a_half_written_file_while_a_run_trains(tmp_path, fake_mnist):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--data-dir", str(fake_mnist), "--epochs", "1", "--checkpoint-every", "1",
                 "--out", str(run)]) == 0
    writer = _vaelab("train", "--resume", str(run), "--epochs", "25", "--quiet")  # a checkpoint every step
    reads = {"config": 0, "checkpoint": 0, "weights": 0, "metrics": 0, "sample": 0}
    try:
        _wait_for_holder(run, writer)
        deadline = time.monotonic() + 20
        while writer.poll() is None and time.monotonic() < deadline:
            RunConfig.load(run / "config.json")
            reads["config"] += 1
            tensors, metadata = read_safetensors(run / "checkpoint.safetensors")  # raises on a torn file
            assert "vaelab" in metadata and tensors
            reads["checkpoint"] += 1
            read_safetensors(run / "model.safetensors")
            reads["weights"] += 1
            lines = (run / "metrics.jsonl").read_text().splitlines()
            for line in lines[:-1]:  # every line but the one being appended is whole
                json.loads(line)
            reads["metrics"] += 1
            if reads["sample"] < 3:
                assert main(["sample", str(run), "--out", str(tmp_path / f"s{reads['sample']}.png"),
                             "--num", "4"]) == 0
                reads["sample"] += 1
            time.sleep(0.02)  # leave the writer its share of a small machine
    finally:
        _, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    assert reads["checkpoint"] >= 10 and reads["sample"] >= 1, reads  # the reads did overlap the writes
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 26))


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS], ids=errno.errorcode.get)
def test_a_filesystem_without_locks_gives_a_warning_not_a_hang(tmp_path, capsys, fake_mnist, monkeypatch, code):
    def unsupported(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(runlock, "_flock", unsupported)
    run = tmp_path / "run"
    started = time.monotonic()
    assert main(["train", *SMALL, "--data-dir", str(fake_mnist), "--epochs", "1", "--out", str(run)]) == 0
    assert time.monotonic() - started < 60
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"vaelab: warning: cannot lock {run / LOCK_FILE} ({os.strerror(code)}")
    assert "does not support file locks" in err[0]
    assert (run / "model.safetensors").is_file()


def test_lock_is_exclusive_across_processes_and_released_after_the_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    probe = ("import sys\nfrom vaelab.runlock import run_lock\nfrom vaelab.errors import RunInUseError\n"
             "try:\n    with run_lock(sys.argv[1], 'probe'):\n        print('locked')\n"
             "except RunInUseError as exc:\n    print('refused', exc.exit_code, exc)\n")

    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(run)], env=_env(), capture_output=True,
                              text=True, timeout=60).stdout.strip()

    with run_lock(run, "vaelab eval") as locked:
        assert locked
        holder = json.loads((run / LOCK_FILE).read_text())
        assert (holder["pid"], holder["command"], holder["host"]) == (os.getpid(), "vaelab eval", socket.gethostname())
        with run_lock(run, "nested"):  # re-entrant within this process
            pass
        out = other_process()
        assert out.startswith("refused 4 ") and f"(pid {os.getpid()}, vaelab eval, started " in out, out
    assert other_process() == "locked"
    assert (run / LOCK_FILE).is_file()  # the file stays; only the lock counts


def test_in_use_error_is_exit_code_4_and_output_elsewhere_takes_no_lock(tmp_path):
    assert RunInUseError.exit_code == 4
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with run_lock_for_output(run, tmp_path / "elsewhere.html", "vaelab report") as locked:
        assert locked is False
    assert not (run / LOCK_FILE).exists()
    with run_lock_for_output(run, run / "report.html", "vaelab report") as locked:
        assert locked is True
    other = tmp_path / "not-a-run"
    other.mkdir()
    with run_lock_for_output(other, other / "report.html", "vaelab report") as locked:
        assert locked is False  # no config.json: nothing is locked or created there
    assert list(other.iterdir()) == []


@pytest.mark.slow
def test_under_torchrun_only_rank_0_locks_and_a_held_run_stops_every_rank(tmp_path, fake_mnist):
    run = _trained(tmp_path, fake_mnist)

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "vaelab", *args]
        return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)

    # Held by another process: rank 0 is refused, rank 1 stops with it, nobody hangs.
    with run_lock(run, "vaelab eval"):
        before = _snapshot(run)
        held = torchrun("train", "--resume", str(run), "--epochs", "2", "--quiet")
        assert held.returncode != 0
        assert f"{run} is in use by another vaelab process (pid {os.getpid()}, vaelab eval" in held.stderr
        assert _snapshot(run) == before
    # Free: both ranks train, and only rank 0 took the lock (rank 1 taking it would have been refused).
    done = torchrun("train", "--resume", str(run), "--epochs", "2", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
