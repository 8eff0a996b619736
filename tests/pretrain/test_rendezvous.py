"""Rank 0's rendezvous store listens where deepspeed.rendezvous_bind says, and a bad MASTER_ADDR is named."""
from __future__ import annotations

import datetime

import psutil
import pytest

from launch.command import free_port
from pretrain import dist

TIMEOUT = datetime.timedelta(seconds=10)


def listening_addresses(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}


@pytest.fixture
def rank0_env(monkeypatch):
    port = free_port()
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    return port


def test_store_listens_only_on_the_master_address(rank0_env, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    store = dist.rendezvous_store(TIMEOUT)
    store.set("key", "value")
    assert store.get("key") == b"value"
    assert listening_addresses(rank0_env) == {"127.0.0.1"}
    del store


def test_bind_all_is_torchs_every_interface(rank0_env, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    store = dist.rendezvous_store(TIMEOUT, bind="all")
    assert listening_addresses(rank0_env) & {"0.0.0.0", "::"}
    del store


def test_master_address_not_on_this_node_is_named(rank0_env, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "192.0.2.1")  # TEST-NET-1: never an address of this host
    with pytest.raises(RuntimeError, match=r"MASTER_ADDR=192\.0\.2\.1 .*rendezvous_bind=all"):
        dist.rendezvous_store(TIMEOUT)
