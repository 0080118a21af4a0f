"""The run's state across starts: the crash-loop count and the requeue count."""

from hpcrun.rundir.state import RunState, read_state


def test_restarts_without_progress_are_counted_and_progress_resets_the_count(tmp_path):
    s = RunState(tmp_path)
    s.begin("1", 0, resumed_from=0)
    s.end("requeued", "deadline", 100)
    s = RunState(tmp_path)
    s.begin("1", 1, resumed_from=100)  # progress: resumes from a newer checkpoint
    assert s.data["no_progress_restarts"] == 0
    for restart in (2, 3):
        s = RunState(tmp_path)
        s.begin("1", restart, resumed_from=100)  # killed before it saved anything new
    assert s.data["no_progress_restarts"] == 2
    s = RunState(tmp_path)
    s.begin("1", 4, resumed_from=150)
    assert s.data["no_progress_restarts"] == 0


def test_each_start_and_how_it_ended_are_recorded_for_people(tmp_path):
    s = RunState(tmp_path)
    s.begin("7", 0, resumed_from=0)
    s.end("requeued", "signal SIGUSR2", 40)
    data = read_state(tmp_path)
    assert data["status"] == "requeued" and data["requeues"] == 1
    assert data["starts"][0]["end"] == "requeued: signal SIGUSR2" and data["starts"][0]["step"] == 40


def test_only_the_writer_writes(tmp_path):
    RunState(tmp_path, writer=False).begin("1", 0, 0)
    assert read_state(tmp_path) == {}


def test_the_rendezvous_port_is_per_start_and_below_the_ephemeral_range(tmp_path):
    """EADDRINUSE at init_process_group: submitit's per-job port (20000-60000) met an outgoing connection's local
    port on the dev cluster once. The port is kept below the kernel's ephemeral range, and a requeued start of the
    same job (SLURM_RESTART_COUNT + 1) gets another."""
    from hpcrun.job.ranks import ephemeral_ports, master_port

    (tmp_path / "range").write_text("32768\t60999\n")
    ephemeral = ephemeral_ports(tmp_path / "range")
    assert ephemeral == (32768, 60999)
    ports = [master_port(str(job), restart, ephemeral) for job in range(200) for restart in range(3)]
    assert all(10000 <= p < 32768 for p in ports)
    assert master_port("55", 0, ephemeral) == master_port("55", 0, ephemeral)  # every rank computes the same
    assert len({master_port("55", r, ephemeral) for r in range(5)}) == 5
    assert 20000 <= master_port("55", 0, None) <= 60000  # no /proc: submitit's range
