"""``cellae sweep --launcher slurm``: one job per run through submitit, collected by ``--resume``.

The jobs run through submitit's local executor (processes of this machine) or a fake one.
"""

import json
import sys
from pathlib import Path

import pytest
import yaml

from cellae import sweep as sweep_module
from cellae.cli import main
from cellae.errors import CellaeError
from cellae.sweep import local as sweep_local
from cellae.sweep import slurm as sweep_slurm
from tiny import tiny_config

submitit = pytest.importorskip("submitit")


def sweep_file(tmp_path: Path) -> Path:
    base = tiny_config(tmp_path, train={"epochs": 1}).to_dict()
    path = tmp_path / "s.yaml"
    # one setting on two seeds: two runs that share their data, and a summary at the end
    path.write_text(yaml.safe_dump({"name": "jobs", "config": base, "runs": [{"name": "a"}],
                                    "seeds": [0, 1]}))
    return path


def status(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def test_each_run_is_a_job_and_resume_collects_them(tmp_path, monkeypatch, capsys):
    jobs = []
    caches_at_submission = []
    slurm_executor = sweep_module.slurm_executor

    def local(folder, parameters):
        caches_at_submission.append(sorted(p.name for p in (tmp_path / "cache").iterdir()))
        executor = slurm_executor(folder, parameters, cluster="local")
        submit = executor.submit

        def keep(*args, **kwargs):
            jobs.append(submit(*args, **kwargs))
            return jobs[-1]

        executor.submit = keep
        return executor

    monkeypatch.setattr(sweep_slurm, "slurm_executor", local)
    assert main(["sweep", str(sweep_file(tmp_path)), "--out", str(tmp_path / "runs"),
                 "--launcher", "slurm", "--slurm-time", "5", "--slurm-option", "account=lab"]) == 0
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    assert f"collect with: cellae sweep --resume {sweep_dir}" in capsys.readouterr().out
    submitted = status(sweep_dir)
    assert submitted["launcher"] == "slurm"
    assert submitted["slurm"] == {"timeout_min": 5, "slurm_additional_parameters": {"account": "lab"}}
    assert submitted["runs"] == {job_name: {"status": "submitted", "job_id": job.job_id}
                                 for job_name, job in zip(["a-f0-s0", "a-f0-s1"], jobs, strict=True)}
    # the one cache both runs use was built here, before any job started
    assert len(caches_at_submission[0]) == 1
    assert [job.result() for job in jobs] == ["trained", "trained"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == caches_at_submission[0]
    assert any((sweep_dir / "submitit").glob("*_log.err"))

    assert main(["sweep", "--resume", str(sweep_dir)]) == 0
    collected = status(sweep_dir)
    assert {n: (r["status"], r["job_id"]) for n, r in collected["runs"].items()} == {
        "a-f0-s0": ("kept", jobs[0].job_id), "a-f0-s1": ("kept", jobs[1].job_id)}
    assert collected["slurm"] == submitted["slurm"]  # remembered for a later submission
    assert "| a |" in (sweep_dir / "summary.md").read_text()
    assert "collect with" not in capsys.readouterr().out


class FakeJob:
    states: dict[str, str] = {}

    def __init__(self, folder, job_id, tasks=(0,)):
        self.job_id = job_id

    def done(self):
        return self.states[self.job_id] not in ("PENDING", "RUNNING")

    @property
    def state(self):
        return self.states[self.job_id]


class FakeExecutor:
    job_class = FakeJob
    submitted: list[str] = []

    def __init__(self, folder, parameters):
        self.folder = folder

    def update_parameters(self, **parameters):
        pass

    def submit(self, function, sweep_dir, name, values, evaluate):
        self.submitted.append(name)
        job = FakeJob(self.folder, str(100 + len(self.submitted)))
        FakeJob.states[job.job_id] = "PENDING"
        return job


def test_a_run_still_in_its_job_is_never_started_twice(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(sweep_slurm, "slurm_executor", FakeExecutor)
    monkeypatch.setattr(FakeExecutor, "submitted", [])
    monkeypatch.setattr(sweep_local, "run_one", lambda sweep_dir, name, values, evaluate:
                        ran.append(name) or "trained")
    assert main(["sweep", str(sweep_file(tmp_path)), "--out", str(tmp_path / "runs"),
                 "--launcher", "slurm"]) == 0
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    assert FakeExecutor.submitted == ["a-f0-s0", "a-f0-s1"]
    FakeJob.states |= {"101": "RUNNING", "102": "FAILED"}

    # submitted again: only the run whose job failed
    assert main(["sweep", "--resume", str(sweep_dir), "--launcher", "slurm"]) == 0
    assert FakeExecutor.submitted == ["a-f0-s0", "a-f0-s1", "a-f0-s1"]
    assert status(sweep_dir)["runs"] == {
        "a-f0-s0": {"status": "submitted", "job_id": "101", "state": "RUNNING"},
        "a-f0-s1": {"status": "submitted", "job_id": "103"},
    }
    assert "collect with" in capsys.readouterr().out

    # collected while a job runs: that run is left to it, one whose job failed is run here
    FakeJob.states["103"] = "CANCELLED"
    assert main(["sweep", "--resume", str(sweep_dir)]) == 0
    assert ran == ["a-f0-s1"] and len(FakeExecutor.submitted) == 3
    runs = status(sweep_dir)["runs"]
    assert runs["a-f0-s0"]["status"] == "submitted" and runs["a-f0-s1"]["status"] == "trained"
    assert not (sweep_dir / "summary.md").exists()  # not before every run is finished


def test_without_submitit_the_error_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    assert main(["sweep", str(sweep_file(tmp_path)), "--out", str(tmp_path / "runs"),
                 "--launcher", "slurm"]) == 2
    assert "pip install 'cellae[slurm]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_slurm_options(tmp_path, monkeypatch):
    assert sweep_module.slurm_parameters("gpu", 90, None, 8, 32.0, ["account=lab", "exclusive"]) == {
        "slurm_partition": "gpu", "timeout_min": 90, "cpus_per_task": 8, "mem_gb": 32.0,
        "slurm_additional_parameters": {"account": "lab", "exclusive": True},
    }
    with pytest.raises(CellaeError, match="KEY=VALUE"):
        sweep_module.slurm_parameters(options=["=x"])
    assert main(["sweep", str(sweep_file(tmp_path)), "--slurm-time", "5"]) == 2
    monkeypatch.setattr(sweep_slurm.shutil, "which", lambda name: None)
    with pytest.raises(CellaeError, match="sbatch"):
        sweep_module.slurm_executor(tmp_path, {})
