"""``demo --procs``: how many processes the demo runs as, the command it starts itself again with, the one-line
errors of a --procs that cannot be had, and signals passed on to the started processes. Nothing here trains;
the real ``demo --procs 2`` is in test_distributed_mpi.py (it needs mpiexec)."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minimaskrcnn.cli import main, make_parser
from minimaskrcnn.engine import launch
from minimaskrcnn.engine.launch import Launch, plan_processes, relaunch_command, start_line
from minimaskrcnn.engine.run import UserError


@pytest.fixture
def machine(monkeypatch):
    """A machine with 2 cores, mpi4py and an mpiexec whose trial launch works (each changed by a test)."""
    state = {"cores": 2, "mpi4py": True, "mpiexec": "/venv/bin/mpiexec", "probes": []}

    def probe(mpiexec, n, timeout=launch.PROBE_TIMEOUT):
        state["probes"].append((mpiexec, n))
        return state.get("probe_fails")

    monkeypatch.setattr(launch, "available_cores", lambda: state["cores"])
    monkeypatch.setattr(launch, "mpi4py_available", lambda: state["mpi4py"])
    monkeypatch.setattr(launch, "find_mpiexec", lambda: state["mpiexec"])
    monkeypatch.setattr(launch, "probe", probe)
    return state


def test_auto_uses_the_largest_divisor_of_the_batch_that_fits_the_cores(machine):
    assert plan_processes("auto", 4) == Launch(2, "/venv/bin/mpiexec", "data-parallel, mpiexec; --procs 1 for one "
                                                                       "process")
    assert machine["probes"] == [("/venv/bin/mpiexec", 2)]      # tried before it is used
    for cores, batch, procs in ((3, 4, 2), (8, 4, 4), (6, 4, 4), (6, 8, 4), (16, 8, 8), (3, 3, 3), (5, 6, 3)):
        machine["cores"] = cores
        assert plan_processes("auto", batch).procs == procs, (cores, batch)
    machine["cores"] = 4                        # --threads is per process: 4 cores hold 2 x 2 threads
    assert plan_processes("auto", 4, threads=2).procs == 2


@pytest.mark.parametrize("change, why", [
    ({"cores": 1}, "one core"),
    ({"mpi4py": False}, "mpi4py is not installed"),
    ({"mpiexec": None}, "no mpiexec beside"),
    ({"probe_fails": "mpiexec -n 2 failed (exit code 1: AssertionError: MPI sees 1 of the 2 processes)"},
     "2 processes failed to start, so the demo runs in one process: mpiexec -n 2 failed (exit code 1: "
     "AssertionError: MPI sees 1 of the 2 processes)"),
])
def test_auto_falls_back_to_one_process_saying_why(machine, change, why):
    machine.update(change)
    plan = plan_processes("auto", 4)
    assert plan.procs == 1 and plan.mpiexec is None and why in plan.why
    line = start_line(plan, 1)
    assert line.startswith("demo: 1 process x 1 BLAS thread (") and "\n" not in line
    if "cores" in change or "mpi4py" in change or "mpiexec" in change:
        assert machine["probes"] == []          # nothing is launched where it cannot work


def test_auto_on_the_gpu_and_two_threads_on_two_cores_are_one_process(machine):
    assert plan_processes("auto", 4, device="cuda") == Launch(1, None, "--device cuda: one process on the GPU")
    plan = plan_processes("auto", 4, threads=2)
    assert plan.procs == 1 and plan.why == "2 cores: no room for a second process of 2 BLAS threads"
    assert machine["probes"] == []


def test_an_explicit_procs_that_cannot_be_had_is_an_error_naming_why(machine):
    with pytest.raises(UserError, match=r"^--procs 3: 3 processes cannot split the demo's batch of 4 images evenly; "
                                        r"choose one of 1, 2, 4$"):
        plan_processes(3, 4)
    with pytest.raises(UserError, match="--procs 2: the demo runs one process on the GPU"):
        plan_processes(2, 4, device="cuda")
    machine["probe_fails"] = "mpiexec -n 2 failed (exit code 1: boom)"
    with pytest.raises(UserError, match=r"^--procs 2: mpiexec -n 2 failed \(exit code 1: boom\)$"):
        plan_processes(2, 4)
    machine["mpiexec"] = None
    with pytest.raises(UserError, match="--procs 2: no mpiexec beside"):
        plan_processes(2, 4)
    machine["mpi4py"] = False
    with pytest.raises(UserError, match=r"--procs 2: mpi4py is not installed \(pip install -e \.\[mpi\]"):
        plan_processes(2, 4)
    assert plan_processes(1, 4) == Launch(1, None, "--procs 1")   # always possible, launches nothing
    machine["cores"] = 1                        # more processes than cores: the user's choice, not an error
    machine.update(mpi4py=True, mpiexec="/venv/bin/mpiexec", probe_fails=None)
    assert plan_processes(4, 4).procs == 4


def test_the_demo_refuses_procs_3_in_one_line_before_doing_anything(tmp_path, capsys):
    out, data = tmp_path / "run", tmp_path / "data"
    assert main(["demo", "--procs", "3", "--out", str(out), "--data", str(data), "--iters", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["minimaskrcnn demo: error: --procs 3: 3 processes cannot split the demo's batch of 4 images "
                   "evenly; choose one of 1, 2, 4"], err
    assert not out.exists() and not data.exists()
    with pytest.raises(SystemExit):
        make_parser().parse_args(["demo", "--procs", "0"])
    assert make_parser().parse_args(["demo"]).procs == "auto"
    assert make_parser().parse_args(["demo", "--procs", "2"]).procs == 2


def test_a_failing_trial_launch_is_one_line_and_the_process_ends(monkeypatch):
    """probe() itself, with subprocess made to fail as an mpi4py built for another MPI does."""
    class Failing:
        returncode = None

        def __init__(self, cmd, **kwargs):
            self.cmd = cmd

        def communicate(self, timeout=None):
            self.returncode = 1
            return ("Traceback (most recent call last):\n  File \"<string>\", line 1\nAssertionError: MPI sees 1 of "
                    "the 2 processes: mpi4py talks to another MPI than this mpiexec\n"
                    "=====================\n", None)

        def poll(self):
            return self.returncode

    monkeypatch.setattr(launch.subprocess, "Popen", Failing)
    assert launch.probe("/x/mpiexec", 2) == ("/x/mpiexec -n 2 failed (exit code 1: AssertionError: MPI sees 1 of the 2 "
                                             "processes: mpi4py talks to another MPI than this mpiexec)")

    class Hanging(Failing):
        ended = []

        def communicate(self, timeout=None):
            if timeout is not None:
                raise subprocess.TimeoutExpired(self.cmd, timeout)
            return "", None

        def terminate(self):             # mpiexec is asked to end (it then ends its processes)
            Hanging.ended.append("terminate")
            self.returncode = -15

        def wait(self, timeout=None):
            return self.returncode

    monkeypatch.setattr(launch.subprocess, "Popen", Hanging)
    assert launch.probe("/x/mpiexec", 2, timeout=3) == "/x/mpiexec -n 2 did not start 2 Pythons in 3 s"
    assert Hanging.ended == ["terminate"]
    def missing(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(launch.subprocess, "Popen", missing)
    assert launch.probe("/x/mpiexec", 2) == "cannot run /x/mpiexec (No such file or directory)"


def test_the_relaunch_is_the_same_command_in_p_processes_with_procs_1(monkeypatch):
    argv = ["--debug", "demo", "--task", "keypoints", "--iters", "7", "--procs", "2", "--threads", "1", "--force"]
    cmd = relaunch_command(Launch(2, "/venv/bin/mpiexec", ""), argv)
    assert cmd == ["/venv/bin/mpiexec", "-n", "2", sys.executable, "-m", "minimaskrcnn", *argv, "--procs", "1"]
    ranks, given = make_parser().parse_args(cmd[6:]), make_parser().parse_args(argv)
    assert ranks.procs == 1 and given.procs == 2
    assert {k: v for k, v in vars(ranks).items() if k != "procs"} == {k: v for k, v in vars(given).items()
                                                                      if k != "procs"}


def test_mpiexec_is_looked_for_beside_python_first_then_on_path(tmp_path, monkeypatch):
    venv, other = tmp_path / "venv" / "bin", tmp_path / "usr" / "bin"
    for folder in (venv, other):
        folder.mkdir(parents=True)
        (folder / "mpiexec").write_text("#!/bin/sh\n")
        (folder / "mpiexec").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.setenv("PATH", str(other))
    assert launch.find_mpiexec() == str(venv / "mpiexec")
    (venv / "mpiexec").unlink()
    assert launch.find_mpiexec() == str(other / "mpiexec")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert launch.find_mpiexec() is None


def test_the_batch_is_the_configs_or_a_resumed_checkpoints(tmp_path):
    assert launch.batch_of_run("tiny") == 4 and launch.batch_of_run("tiny_keypoints") == 4
    ckpt = tmp_path / "last.npz"
    np.savez(ckpt, **{"meta.json": np.array(json.dumps({"config": {"images_per_batch": 2}}))})
    assert launch.batch_of_run("tiny", ckpt) == 2
    ckpt.write_bytes(b"not a checkpoint")           # the ranks will say what is wrong with it
    assert launch.batch_of_run("tiny", ckpt) == 4
    assert launch.batch_of_run("tiny", tmp_path / "absent.npz") == 4


def test_the_cores_are_those_this_process_may_use():
    assert launch.available_cores() == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                        else os.cpu_count())


def test_ctrl_c_is_passed_on_once_and_its_exit_code_returned(tmp_path):
    """A parent waiting in run_passing_signals gets SIGINT (as a Ctrl-C would): its child, in a session of its
    own, gets exactly one SIGINT and the parent returns the child's exit code; it does not raise."""
    child = textwrap.dedent("""
        import signal, sys, time
        got = []
        signal.signal(signal.SIGINT, lambda s, f: got.append(s))
        print("ready", flush=True)
        t0 = time.time()
        while not got and time.time() - t0 < 30:
            time.sleep(0.05)
        time.sleep(0.5)                  # a second SIGINT would arrive meanwhile
        print("child got", len(got), flush=True)
        sys.exit(7 if got else 0)
    """)
    parent = textwrap.dedent(f"""
        import sys
        from minimaskrcnn.engine.launch import run_passing_signals
        code = run_passing_signals([sys.executable, "-c", {child!r}])
        print("parent returns", code, flush=True)
    """)
    p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=launch.relaunch_env())
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert out.split("\n")[:2] == ["child got 1", "parent returns 7"], out
    assert p.returncode == 0
