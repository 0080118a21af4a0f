"""What a start records about where it runs."""

import os
import socket

from hpcrun.job.context import machine


def test_a_starts_log_names_the_host_its_cpu_model_and_its_cpus(tmp_path):
    """A bit-for-bit continuation holds on the same kind of machine: the log says which one each start had."""
    cpus = len(os.sched_getaffinity(0))
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert machine(str(info)) == f"{socket.gethostname()}: AMD EPYC 9654 96-Core Processor, {cpus} CPUs"
    assert machine(str(tmp_path / "none")) == f"{socket.gethostname()}: unknown CPU, {cpus} CPUs"
