"""Tests for the config chain (nixl_memkv.config) and the auth key helpers (nixl_memkv.auth)."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import yaml

from nixl_memkv.auth import fingerprint, generate_auth_key, parse_auth_key
from nixl_memkv.config import (
    ClientConfig,
    NodeConfig,
    format_size,
    load_client_config,
    load_node_config,
    parse_size,
    resolve_disk_capacity,
    split_server,
)
from nixl_memkv.errors import ConfigError

# A fixed, random-looking key so "never echoed" checks can search for it.
KEY_HEX = "3f9a1c7e5b2d4f608e1a9c3b7d5f2e4a6c8b0d1f3e5a7c9b2d4f6e8a0c1b3d5f"
KEY = bytes.fromhex(KEY_HEX)
OTHER_KEY_HEX = "c0ffee" + "11" * 29


def write_yaml(tmp_path, data, name="memkv.yaml"):
    """Write a YAML config (a mapping, or raw text) and return its path."""
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def assert_no_key(text: str, key_hex: str = KEY_HEX) -> None:
    """The key must not leak in any spelling, nor any long chunk of it."""
    low = text.lower()
    assert key_hex.lower() not in low
    assert key_hex[:16].lower() not in low
    assert repr(bytes.fromhex(key_hex)) not in text


# --------------------------------------------------------------------------
# Client config: sources and precedence.


def test_defaults_with_only_servers():
    cfg = load_client_config(env={"MEMKV_SERVERS": "node1"})
    assert cfg == ClientConfig(servers=("node1:9900",), auth_key=None)
    assert cfg.transport == "auto"
    assert cfg.rdma_devices == ()
    assert cfg.license is None and cfg.license_pubkey is None
    assert (cfg.staging_size_mb, cfg.staging_slot_mb) == (256, 16)
    assert cfg.num_connections == 4
    assert (cfg.connect_timeout_ms, cfg.op_timeout_ms) == (5000, 30000)
    assert cfg.namespace == ""


def test_no_servers_allowed_when_not_required():
    cfg = load_client_config(env={}, require_servers=False)
    assert cfg.servers == ()
    assert cfg.auth_key is None


def test_no_servers_is_an_error_naming_every_source():
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={})
    msg = str(exc.value)
    assert "MEMKV_SERVERS" in msg and "MEMKV_CONFIG" in msg and "host:port" in msg


def test_env_only(tmp_path):
    env = {
        "MEMKV_SERVERS": "a:1, b:2",
        "MEMKV_AUTH_KEY": KEY_HEX,
        "MEMKV_TRANSPORT": "TCP",
        "MEMKV_RDMA_DEVICES": "mlx5_0,mlx5_1",
        "MEMKV_LICENSE": str(tmp_path / "memkv.lic"),
        "MEMKV_LICENSE_PUBKEY": "AB" * 32,
        "MEMKV_STAGING_SIZE_MB": "64",
        "MEMKV_STAGING_SLOT_MB": "8",
        "MEMKV_NUM_CONNECTIONS": "16",
        "MEMKV_CONNECT_TIMEOUT_MS": "100",
        "MEMKV_OP_TIMEOUT_MS": "2000",
        "MEMKV_NAMESPACE": "llama70b/",
    }
    cfg = load_client_config(env=env)
    assert cfg.servers == ("a:1", "b:2")
    assert cfg.auth_key == KEY
    assert cfg.transport == "tcp"
    assert cfg.rdma_devices == ("mlx5_0", "mlx5_1")
    assert cfg.license == str(tmp_path / "memkv.lic")
    assert cfg.license_pubkey == "ab" * 32
    assert (cfg.staging_size_mb, cfg.staging_slot_mb, cfg.num_connections) == (64, 8, 16)
    assert (cfg.connect_timeout_ms, cfg.op_timeout_ms) == (100, 2000)
    assert cfg.namespace == "llama70b/"


def test_empty_env_var_counts_as_unset():
    cfg = load_client_config(env={"MEMKV_SERVERS": "a", "MEMKV_NUM_CONNECTIONS": "",
                                  "MEMKV_TRANSPORT": "  ", "MEMKV_CONFIG": ""})
    assert cfg.num_connections == 4
    assert cfg.transport == "auto"


def test_yaml_beats_env(tmp_path):
    path = write_yaml(tmp_path, {"servers": ["y1:7000", "y2"], "num_connections": 8,
                                 "transport": "rdma", "rdma_devices": "mlx5_2"})
    env = {"MEMKV_CONFIG": path, "MEMKV_SERVERS": "envhost:1", "MEMKV_NUM_CONNECTIONS": "2",
           "MEMKV_TRANSPORT": "tcp", "MEMKV_OP_TIMEOUT_MS": "777"}
    cfg = load_client_config(env=env)
    assert cfg.servers == ("y1:7000", "y2:9900")
    assert cfg.num_connections == 8
    assert cfg.transport == "rdma"
    assert cfg.rdma_devices == ("mlx5_2",)
    assert cfg.op_timeout_ms == 777  # not in the YAML: the env var still applies


def test_overrides_beat_yaml_and_env(tmp_path):
    path = write_yaml(tmp_path, {"servers": "y:1", "num_connections": 8, "namespace": "yaml"})
    env = {"MEMKV_CONFIG": path, "MEMKV_SERVERS": "e:1", "MEMKV_NUM_CONNECTIONS": "2",
           "MEMKV_NAMESPACE": "env", "MEMKV_AUTH_KEY": OTHER_KEY_HEX}
    # Plugin params arrive as strings.
    cfg = load_client_config({"servers": "a:1,b:2", "num_connections": "32", "auth_key": KEY_HEX},
                             env=env)
    assert cfg.servers == ("a:1", "b:2")
    assert cfg.num_connections == 32
    assert cfg.auth_key == KEY
    assert cfg.namespace == "yaml"


def test_overrides_accept_native_types():
    cfg = load_client_config({"servers": ["a", "[::1]:5"], "num_connections": 3, "auth_key": KEY,
                              "rdma_devices": ("mlx5_0",)}, env={})
    assert cfg.servers == ("a:9900", "[::1]:5")
    assert cfg.num_connections == 3
    assert cfg.auth_key == KEY
    assert cfg.rdma_devices == ("mlx5_0",)


def test_none_override_falls_through():
    cfg = load_client_config({"servers": None, "transport": ""}, env={"MEMKV_SERVERS": "e"})
    assert cfg.servers == ("e:9900",)
    assert cfg.transport == "auto"


def test_yaml_relative_paths_resolve_against_yaml_folder(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write_yaml(sub, {"servers": "a", "license": "memkv.lic", "license_pubkey": "keys.txt"})
    cfg = load_client_config(env={"MEMKV_CONFIG": path})
    assert cfg.license == str(sub / "memkv.lic")
    assert cfg.license_pubkey == str(sub / "keys.txt")


def test_empty_yaml_file_sets_nothing(tmp_path):
    path = write_yaml(tmp_path, "")
    cfg = load_client_config(env={"MEMKV_CONFIG": path, "MEMKV_SERVERS": "e"})
    assert cfg.servers == ("e:9900",)


def test_yaml_node_section_is_ignored_by_clients(tmp_path):
    path = write_yaml(tmp_path, {"servers": "a", "node": {"data_dir": "/d", "port": 1}})
    assert load_client_config(env={"MEMKV_CONFIG": path}).servers == ("a:9900",)


# --------------------------------------------------------------------------
# Servers.


@pytest.mark.parametrize("text, expected", [
    ("host", ("host:9900",)),
    ("host:1234", ("host:1234",)),
    ("10.0.0.1:9900,10.0.0.2", ("10.0.0.1:9900", "10.0.0.2:9900")),
    (" a:1 , b:2 ,", ("a:1", "b:2")),
    ("[::1]:9901", ("[::1]:9901",)),
    ("[::1]", ("[::1]:9900",)),
    ("[fe80::1%eth0]:7,x:65535", ("[fe80::1%eth0]:7", "x:65535")),
])
def test_servers_parsing(text, expected):
    assert load_client_config(env={"MEMKV_SERVERS": text}).servers == expected


def test_split_server():
    assert split_server("[::1]:5") == ("::1", 5)
    assert split_server("h") == ("h", 9900)


@pytest.mark.parametrize("text, detail", [
    ("a:0", "out of range"),
    ("a:65536", "out of range"),
    (":9900", "empty host"),
    ("[]:9900", "empty host"),
    ("a:x", "not a number"),
    ("a:", "not a number"),
    ("::1", "[address]:port"),
    ("[::1", "closing"),
    ("[::1]x", "after ']'"),
    ("a:1,a:1", "listed twice"),
    ("a,a:9900", "listed twice"),
])
def test_bad_servers(text, detail):
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_SERVERS": text})
    msg = str(exc.value)
    assert msg.startswith("MEMKV_SERVERS=")
    assert detail in msg
    assert "host:port" in msg and "[::1]:9900" in msg


def test_servers_yaml_list_with_non_string(tmp_path):
    path = write_yaml(tmp_path, "servers:\n  - a:1\n  - 42\n")
    with pytest.raises(ConfigError, match=r"servers in .*memkv\.yaml.*host:port"):
        load_client_config(env={"MEMKV_CONFIG": path})


# --------------------------------------------------------------------------
# Bad values: every message names the source and the accepted form.


def test_exact_message_for_bad_integer():
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_SERVERS": "a", "MEMKV_NUM_CONNECTIONS": "abc"})
    assert str(exc.value) == "MEMKV_NUM_CONNECTIONS='abc' is not valid: expected an integer from 1 to 256"


@pytest.mark.parametrize("var, value, form", [
    ("MEMKV_NUM_CONNECTIONS", "0", "an integer from 1 to 256"),
    ("MEMKV_NUM_CONNECTIONS", "257", "an integer from 1 to 256"),
    ("MEMKV_NUM_CONNECTIONS", "1.5", "an integer from 1 to 256"),
    ("MEMKV_STAGING_SIZE_MB", "-1", "a positive integer"),
    ("MEMKV_STAGING_SLOT_MB", "0", "a positive integer"),
    ("MEMKV_CONNECT_TIMEOUT_MS", "0", "a positive integer"),
    ("MEMKV_OP_TIMEOUT_MS", "soon", "a positive integer"),
    ("MEMKV_TRANSPORT", "infiniband", "one of auto, rdma, tcp"),
    ("MEMKV_GPUDIRECT", "on", "one of auto, off"),
    ("MEMKV_RDMA_DEVICES", "mlx5_0,mlx 5", "RDMA device names"),
])
def test_bad_env_values(var, value, form):
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_SERVERS": "a", var: value})
    msg = str(exc.value)
    assert msg.startswith(f"{var}={value!r} is not valid")
    assert form in msg


def test_bad_yaml_value_names_key_and_file(tmp_path):
    path = write_yaml(tmp_path, {"servers": "a", "num_connections": "many"})
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_CONFIG": path})
    msg = str(exc.value)
    assert f"num_connections in {path}" in msg
    assert "'many'" in msg and "expected an integer from 1 to 256" in msg


def test_yaml_bool_is_not_an_integer(tmp_path):
    path = write_yaml(tmp_path, {"servers": "a", "num_connections": True})
    with pytest.raises(ConfigError, match="num_connections in"):
        load_client_config(env={"MEMKV_CONFIG": path})


def test_bad_override_names_backend_param():
    with pytest.raises(ConfigError) as exc:
        load_client_config({"num_connections": "-3"}, env={"MEMKV_SERVERS": "a"})
    msg = str(exc.value)
    assert "backend param num_connections" in msg and "expected an integer from 1 to 256" in msg


def test_overrides_source_label_is_configurable():
    with pytest.raises(ConfigError, match="extra_config transport"):
        load_client_config({"transport": "udp"}, env={"MEMKV_SERVERS": "a"},
                           overrides_source="extra_config")


def test_slot_larger_than_size_names_both_sources(tmp_path):
    path = write_yaml(tmp_path, {"servers": "a", "staging_size_mb": 8})
    with pytest.raises(ConfigError) as exc:
        load_client_config({"staging_slot_mb": "16"}, env={"MEMKV_CONFIG": path})
    msg = str(exc.value)
    assert "backend param staging_slot_mb" in msg
    assert f"staging_size_mb in {path}" in msg
    assert "staging_slot_mb <= staging_size_mb" in msg


def test_slot_equal_to_size_is_fine():
    cfg = load_client_config({"staging_size_mb": 4, "staging_slot_mb": 4}, env={"MEMKV_SERVERS": "a"})
    assert cfg.staging_slot_mb == cfg.staging_size_mb == 4


def test_slot_above_default_size_blames_the_default():
    with pytest.raises(ConfigError, match="from the default"):
        load_client_config(env={"MEMKV_SERVERS": "a", "MEMKV_STAGING_SLOT_MB": "512"})


def test_unknown_yaml_key_is_named_with_known_keys(tmp_path):
    path = write_yaml(tmp_path, {"servers": "a", "num_conections": 3})
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_CONFIG": path})
    msg = str(exc.value)
    assert "'num_conections'" in msg and path in msg
    assert "did you mean 'num_connections'" in msg
    for known in ("servers", "auth_key", "staging_slot_mb", "namespace", "node"):
        assert known in msg


def test_unknown_override_key():
    with pytest.raises(ConfigError) as exc:
        load_client_config({"server": "a"}, env={})
    msg = str(exc.value)
    assert "unknown backend param 'server'" in msg and "servers" in msg


def test_missing_yaml_file_names_path(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_CONFIG": path})
    msg = str(exc.value)
    assert "MEMKV_CONFIG" in msg and path in msg and "no such file" in msg


def test_unreadable_yaml_names_path(tmp_path):
    # A directory cannot be read as a file, even by root (unlike chmod 000).
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_CONFIG": str(tmp_path)})
    msg = str(exc.value)
    assert "MEMKV_CONFIG" in msg and str(tmp_path) in msg and "cannot read" in msg


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str")])
def test_yaml_not_a_mapping(tmp_path, text, kind):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_CONFIG": path})
    msg = str(exc.value)
    assert "MEMKV_CONFIG" in msg and path in msg and "YAML mapping" in msg and kind in msg


def test_yaml_syntax_error_does_not_echo_the_file(tmp_path):
    path = write_yaml(tmp_path, f"auth_key: {KEY_HEX}\nservers: [a, b\n")
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_CONFIG": path})
    msg = str(exc.value)
    assert "not valid YAML" in msg and path in msg and "line" in msg
    assert_no_key(msg)


# --------------------------------------------------------------------------
# The auth key is a secret.


def test_auth_key_from_yaml(tmp_path):
    path = write_yaml(tmp_path, {"servers": "a", "auth_key": KEY_HEX.upper()})
    cfg = load_client_config(env={"MEMKV_CONFIG": path, "MEMKV_AUTH_KEY": OTHER_KEY_HEX})
    assert cfg.auth_key == KEY


@pytest.mark.parametrize("value, detail", [
    (KEY_HEX[:-2], "got 62 characters"),
    (KEY_HEX + "00", "got 66 characters"),
    (KEY_HEX[:-1] + "g", "not hex"),
])
def test_bad_auth_key_env(value, detail):
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_SERVERS": "a", "MEMKV_AUTH_KEY": value})
    msg = str(exc.value)
    assert "MEMKV_AUTH_KEY" in msg and detail in msg
    assert "64 hex characters (32 bytes); generate one with `memkv keygen`" in msg
    assert_no_key(msg)
    assert value[:16] not in msg


def test_bad_auth_key_yaml_and_override(tmp_path):
    path = write_yaml(tmp_path, {"servers": "a", "auth_key": KEY_HEX[:40]})
    with pytest.raises(ConfigError) as exc:
        load_client_config(env={"MEMKV_CONFIG": path})
    assert f"auth_key in {path}" in str(exc.value)
    assert_no_key(str(exc.value))
    with pytest.raises(ConfigError) as exc:
        load_client_config({"auth_key": KEY[:16]}, env={"MEMKV_SERVERS": "a"})
    msg = str(exc.value)
    assert "backend param auth_key" in msg and "got 16 bytes" in msg
    assert repr(KEY[:16]) not in msg and KEY[:16].hex() not in msg


def test_auth_key_never_in_repr_or_redacted():
    cfg = load_client_config(env={"MEMKV_SERVERS": "a,[::1]", "MEMKV_AUTH_KEY": KEY_HEX})
    for text in (repr(cfg), str(cfg), str(cfg.redacted()), f"{cfg}"):
        assert_no_key(text)
    red = cfg.redacted()
    assert red["auth_key"] == "<set>"
    assert set(red) == {f for f in ClientConfig.__dataclass_fields__}
    assert red["servers"] == ["a:9900", "[::1]:9900"]
    assert repr(cfg).startswith("PluginConfig {servers=[a:9900, [::1]:9900], auth_key=<set>, transport=auto")
    assert repr(cfg).endswith("}")


def test_redacted_unset_key():
    cfg = load_client_config(env={"MEMKV_SERVERS": "a"})
    assert cfg.redacted()["auth_key"] == "<unset>"
    assert "auth_key=<unset>" in repr(cfg)


def test_parse_auth_key_and_helpers():
    assert parse_auth_key(KEY_HEX + "\n", "X") == KEY
    key = generate_auth_key()
    assert len(key) == 64 and parse_auth_key(key, "X") and key != generate_auth_key()
    assert fingerprint(KEY) == hashlib.sha256(KEY).hexdigest()[:8]
    with pytest.raises(ConfigError, match=r"^my-source is not valid"):
        parse_auth_key("xyz", "my-source")


# --------------------------------------------------------------------------
# Sizes.


@pytest.mark.parametrize("text, expected", [
    ("1048576", 1048576),
    (4096, 4096),
    ("0", 0),
    ("4GiB", 4 * 2**30),
    ("512MiB", 512 * 2**20),
    ("1.5GB", 1_500_000_000),
    ("1.5GiB", 3 * 2**29),
    ("2 TiB", 2 * 2**40),
    ("64k", 64 * 1024),
    ("8Gi", 8 * 2**30),
    ("100mb", 100_000_000),
    ("10B", 10),
])
def test_parse_size(text, expected):
    assert parse_size(text, "X") == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "4 XB", "1.2.3GB", "GiB", True, [1]])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError) as exc:
        parse_size(text, "MEMKV_DRAM_CAPACITY")
    msg = str(exc.value)
    assert msg.startswith("MEMKV_DRAM_CAPACITY=") and "512MiB, 4GiB or 1.5GB" in msg


@pytest.mark.parametrize("n, text", [
    (0, "0B"), (1023, "1023B"), (1024, "1KiB"), (512 * 2**20, "512MiB"),
    (4 * 2**30, "4GiB"), (3 * 2**29, "1.5GiB"), (2**40, "1TiB"),
])
def test_format_size(n, text):
    assert format_size(n) == text
    assert parse_size(text, "X") == n


# --------------------------------------------------------------------------
# Node config.


def node_env(tmp_path, **extra):
    env = {"MEMKV_DATA_DIR": str(tmp_path / "data"), "MEMKV_AUTH_KEY": KEY_HEX}
    env.update(extra)
    return env


def test_node_defaults(tmp_path):
    cfg = load_node_config(env=node_env(tmp_path))
    assert cfg.data_dir == str(tmp_path / "data")
    assert cfg.auth_key == KEY
    assert (cfg.host, cfg.port, cfg.admin_port, cfg.effective_admin_port) == ("0.0.0.0", 9900, None, 9901)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < cfg.dram_capacity <= physical // 4
    assert cfg.disk_capacity is None
    assert (cfg.fsync, cfg.fsync_interval_ms, cfg.max_connections, cfg.io_timeout_ms) == ("interval", 1000, 10000, 60000)
    assert cfg.node_id is None and cfg.log_level == "INFO"


def test_node_env_only(tmp_path):
    cfg = load_node_config(env=node_env(
        tmp_path, MEMKV_HOST="127.0.0.1", MEMKV_PORT="7000", MEMKV_ADMIN_PORT="8000",
        MEMKV_DRAM_CAPACITY="4GiB", MEMKV_DISK_CAPACITY="0", MEMKV_FSYNC="always",
        MEMKV_FSYNC_INTERVAL_MS="50", MEMKV_MAX_CONNECTIONS="64", MEMKV_NODE_ID="n-1",
        MEMKV_LOG_LEVEL="warn"))
    assert (cfg.host, cfg.port, cfg.effective_admin_port) == ("127.0.0.1", 7000, 8000)
    assert cfg.dram_capacity == 4 * 2**30 and cfg.disk_capacity == 0
    assert (cfg.fsync, cfg.fsync_interval_ms, cfg.max_connections) == ("always", 50, 64)
    assert cfg.node_id == "n-1" and cfg.log_level == "WARNING"


def test_node_chain_cli_over_yaml_over_env(tmp_path):
    path = write_yaml(tmp_path, {
        "auth_key": KEY_HEX,
        "servers": "a",
        "node": {"data_dir": "data", "port": 7000, "dram_capacity": "1GiB", "fsync": "never",
                 "disk_capacity": "1.5GB"},
    })
    env = {"MEMKV_CONFIG": path, "MEMKV_AUTH_KEY": OTHER_KEY_HEX, "MEMKV_PORT": "6000",
           "MEMKV_DRAM_CAPACITY": "2GiB", "MEMKV_MAX_CONNECTIONS": "10", "MEMKV_DATA_DIR": "/env"}
    cfg = load_node_config({"port": 5000, "host": None, "dram_capacity": None}, env=env)
    assert cfg.port == 5000  # CLI flag wins
    assert cfg.effective_admin_port == 5001
    assert cfg.host == "0.0.0.0"  # flag not given, nowhere else set
    assert cfg.dram_capacity == 2**30  # YAML beats env
    assert cfg.disk_capacity == 1_500_000_000
    assert cfg.fsync == "never"
    assert cfg.max_connections == 10  # only in env
    assert cfg.auth_key == KEY  # top-level YAML key beats env
    assert cfg.data_dir == str(tmp_path / "data")  # relative to the YAML file


def test_node_cli_sizes_as_strings(tmp_path):
    cfg = load_node_config({"dram_capacity": "512MiB", "disk_capacity": "10GB", "admin_port": "9999"},
                           env=node_env(tmp_path))
    assert cfg.dram_capacity == 512 * 2**20
    assert cfg.disk_capacity == 10 * 10**9
    assert cfg.effective_admin_port == 9999


@pytest.mark.parametrize("overrides, env_extra, fragment", [
    ({"port": "70000"}, {}, "--port='70000' is not valid: expected an integer from 1 to 65535"),
    ({}, {"MEMKV_ADMIN_PORT": "0"}, "MEMKV_ADMIN_PORT='0' is not valid: expected an integer from 1 to 65535"),
    ({}, {"MEMKV_DRAM_CAPACITY": "0"}, "MEMKV_DRAM_CAPACITY='0' is not valid (it must be more than 0)"),
    ({}, {"MEMKV_DISK_CAPACITY": "lots"}, "MEMKV_DISK_CAPACITY='lots' is not valid: expected a size"),
    ({}, {"MEMKV_FSYNC": "sometimes"}, "MEMKV_FSYNC='sometimes' is not valid: expected one of always, interval, never"),
    ({}, {"MEMKV_FSYNC_INTERVAL_MS": "0"}, "MEMKV_FSYNC_INTERVAL_MS='0' is not valid: expected a positive integer"),
    ({}, {"MEMKV_LOG_LEVEL": "loud"}, "MEMKV_LOG_LEVEL='loud' is not valid: expected one of DEBUG, INFO"),
    ({"node_id": "has space"}, {}, "--node-id='has space' is not valid"),
    ({"host": "a b"}, {}, "--host='a b' is not valid: expected a host name"),
])
def test_node_bad_values(tmp_path, overrides, env_extra, fragment):
    with pytest.raises(ConfigError) as exc:
        load_node_config(overrides, env=node_env(tmp_path, **env_extra))
    assert fragment in str(exc.value)


def test_node_bad_yaml_value_names_section(tmp_path):
    path = write_yaml(tmp_path, {"node": {"port": "high"}})
    with pytest.raises(ConfigError) as exc:
        load_node_config(env=node_env(tmp_path, MEMKV_CONFIG=path))
    assert f"node.port in {path}" in str(exc.value)


def test_node_admin_port_conflicts(tmp_path):
    with pytest.raises(ConfigError, match="port \\+ 1"):
        load_node_config({"port": 65535}, env=node_env(tmp_path))
    assert load_node_config({"port": 65535, "admin_port": 80}, env=node_env(tmp_path)).effective_admin_port == 80
    with pytest.raises(ConfigError, match="same as the data port"):
        load_node_config({"port": 7000, "admin_port": 7000}, env=node_env(tmp_path))


def test_node_requires_data_dir_and_key(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_node_config(env={"MEMKV_AUTH_KEY": KEY_HEX})
    assert "--data-dir" in str(exc.value) and "MEMKV_DATA_DIR" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_node_config({"data_dir": str(tmp_path)}, env={})
    msg = str(exc.value)
    assert "MEMKV_AUTH_KEY" in msg and "--auth-key-file" in msg and "memkv keygen" in msg


def test_node_auth_key_file(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY_HEX + "\n")
    cfg = load_node_config({"data_dir": str(tmp_path), "auth_key_file": str(key_file)},
                           env={"MEMKV_AUTH_KEY": OTHER_KEY_HEX})
    assert cfg.auth_key == KEY
    with pytest.raises(ConfigError) as exc:
        load_node_config({"data_dir": str(tmp_path), "auth_key_file": str(tmp_path / "missing")}, env={})
    assert "--auth-key-file" in str(exc.value) and "missing" in str(exc.value)
    key_file.write_text(KEY_HEX[:-4])
    with pytest.raises(ConfigError) as exc:
        load_node_config({"data_dir": str(tmp_path), "auth_key_file": str(key_file)}, env={})
    assert "--auth-key-file" in str(exc.value) and "got 60 characters" in str(exc.value)
    assert_no_key(str(exc.value))


def test_node_yaml_errors(tmp_path):
    path = write_yaml(tmp_path, {"node": {"data_dir": "/d", "prot": 1}})
    with pytest.raises(ConfigError) as exc:
        load_node_config(env=node_env(tmp_path, MEMKV_CONFIG=path))
    msg = str(exc.value)
    assert "'prot'" in msg and "did you mean 'port'" in msg and "node:" in msg
    path = write_yaml(tmp_path, {"node": ["data_dir"]}, name="list.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of node settings"):
        load_node_config(env=node_env(tmp_path, MEMKV_CONFIG=path))
    with pytest.raises(ConfigError, match="unknown option 'data'"):
        load_node_config({"data": "/x"}, env=node_env(tmp_path))


def test_node_repr_hides_key(tmp_path):
    cfg = load_node_config(env=node_env(tmp_path))
    assert repr(cfg).startswith("NodeConfig {data_dir=")
    assert "auth_key=<set>" in repr(cfg)
    assert_no_key(repr(cfg))
    assert_no_key(str(cfg.redacted()))


def test_resolve_disk_capacity(tmp_path):
    base = load_node_config(env=node_env(tmp_path))
    # data_dir does not exist yet: its nearest existing parent is measured.
    free = shutil.disk_usage(tmp_path).free
    resolved = resolve_disk_capacity(base)
    assert 0 < resolved <= free
    assert abs(resolved - free * 0.8) <= free * 0.05  # free space may move a little meanwhile
    explicit = load_node_config({"disk_capacity": "0"}, env=node_env(tmp_path))
    assert resolve_disk_capacity(explicit) == 0
    assert resolve_disk_capacity(NodeConfig(data_dir=str(tmp_path), auth_key=KEY, disk_capacity=123)) == 123
