"""`pdserve up` flags to the controller's PD config: the link the cost model assumes."""

import argparse

import pytest

from pdserve.cluster import cli


def _config(*flags: str):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.controller_config(parser.parse_args(["--prefill", "1", "--decode", "1", *flags]))


@pytest.mark.parametrize(
    "flags, gbps",
    [
        ((), cli.DEFAULT_LINK_GBPS),
        (("--kv-transport", "nixl"), cli.DEFAULT_LINK_GBPS),
        (("--kv-transport", "cuda_ipc"), cli.CUDA_IPC_LINK_GBPS),
        (("--kv-transport", "cuda_ipc", "--pd-link-gbps", "40"), 40.0),
        (("--pd-link-gbps", "2.5", "--prefix-pull", "cost"), 2.5),
    ],
)
def test_the_link_follows_the_transport_unless_given(flags, gbps):
    config = _config(*flags)
    assert config.pd.link_bandwidth_gbps == gbps
    if config.pull is not None:
        assert config.pull.link_bandwidth_gbps == gbps
