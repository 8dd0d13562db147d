"""The `memkv` command line: server, status, keygen, tenant, license, bench, demo."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import click

from .errors import MemKVError


def _fail(e: Exception) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nixl-memkv", prog_name="memkv")
def main() -> None:
    """MemKV: a shared, durable KV-cache memory tier for LLM inference."""


@main.command()
@click.option("--data-dir", help="Where shards, the node id and the lock live (MEMKV_DATA_DIR).")
@click.option("--host", help="Listen address (MEMKV_HOST, default 0.0.0.0).")
@click.option("--port", type=int, help="Data port (MEMKV_PORT, default 9900).")
@click.option("--admin-port", type=int, help="HTTP admin port (MEMKV_ADMIN_PORT, default port + 1).")
@click.option("--dram-capacity", help="DRAM tier size, e.g. 64GiB (MEMKV_DRAM_CAPACITY, default 25% of RAM).")
@click.option("--disk-capacity", help="Shard tier size, e.g. 2TiB; 0 = DRAM only (MEMKV_DISK_CAPACITY, "
                                      "default 80% of the data dir's free space).")
@click.option("--fsync", type=click.Choice(["always", "interval", "never"]),
              help="always: ack after the shard is synced; interval (default): write-back, synced every "
                   "--fsync-interval-ms; never: leave syncing to the OS.")
@click.option("--fsync-interval-ms", type=int, help="Sync cadence for --fsync interval (default 1000).")
@click.option("--max-connections", type=int, help="Concurrent client connections (MEMKV_MAX_CONNECTIONS, default "
                                                  "10000); past it a client is told the node is full.")
@click.option("--admin-auth", type=click.Choice(["local", "key", "none"]),
              help="Who may read /v1/status (MEMKV_ADMIN_AUTH): local (default): this host freely, other hosts "
                   "with the auth key as a bearer token; key: always the token; none: anyone. /v1/health and "
                   "/metrics are always open.")
@click.option("--io-timeout-ms", type=int, help="Drop a client that stops mid-message this long (MEMKV_IO_TIMEOUT_MS, "
                                                "default 60000); idle connections are kept.")
@click.option("--rdma-devices", help="RDMA devices to serve clients over, e.g. mlx5_0,mlx5_1 "
                                     "(MEMKV_RDMA_DEVICES; default none: TCP only).")
@click.option("--tenants", help="Tenants file (MEMKV_TENANTS): each tenant gets its own key, keyspace and quotas; "
                                "SIGHUP reloads it. Default: the cluster key only.")
@click.option("--s3-port", type=int, help="Serve the S3 door on this port, for stock S3 clients (NIXL OBJ, "
                                         "Dynamo, boto3) with a tenant's S3 keys (MEMKV_S3_PORT; default off).")
@click.option("--auth-key-file", help="File holding the 64-hex auth key (else MEMKV_AUTH_KEY).")
@click.option("--node-id", help="Stable node id (default: generated once, kept in the data dir).")
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR (MEMKV_LOG_LEVEL).")
@click.option("--config", "config_path", help="YAML config file (else MEMKV_CONFIG).")
def server(config_path, **flags) -> None:
    """Run a MemKV node in the foreground (SIGTERM/SIGINT stop it cleanly)."""
    import os

    from .config import load_node_config
    from .logs import setup_logging
    from .node import run_node

    env = dict(os.environ)
    if config_path:
        env["MEMKV_CONFIG"] = config_path
    try:
        cfg = load_node_config(flags, env=env)
        setup_logging(cfg.log_level)
        sys.exit(run_node(cfg))
    except MemKVError as e:
        _fail(e)


def _check_admins(admins: tuple[str, ...], nodes: list[str]) -> tuple[str, ...]:
    """Each --admin as canonical host:port, one per server at most."""
    from .config import format_server, split_server
    from .errors import ConfigError

    if len(admins) > len(nodes):
        raise ConfigError(f"--admin was given {len(admins)} times for {len(nodes)} server(s): give at most one "
                          "--admin HOST:PORT per server, in the order of SERVERS")
    checked = []
    for a in admins:
        try:
            host, port = split_server(a, default_port=0)
            if port == 0:
                raise ValueError(f"{a!r} has no port")
        except ValueError as exc:
            raise ConfigError(f"--admin {a!r} is not valid ({exc}): expected the admin HOST:PORT, "
                              "e.g. --admin 10.0.0.5:9901") from None
        checked.append(format_server(host, port))
    return tuple(checked)


def _admin_url(server: str, admin: str | None) -> str:
    from .config import format_server, split_server

    if admin:
        return f"http://{admin}"  # already checked by _check_admins
    host, port = split_server(server)
    return f"http://{format_server(host, port + 1)}"


@main.command()
@click.argument("servers", nargs=-1)
@click.option("--admin", "admins", multiple=True, help="Admin host:port when it is not data port + 1 (repeatable, "
                                                       "in the order of SERVERS).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status documents as JSON.")
@click.option("--timeout", default=3.0, show_default=True, help="Seconds to wait for each node.")
def status(servers, admins, as_json, timeout) -> None:
    """Show every node's status (from MEMKV_SERVERS unless SERVERS are given)."""
    from rich.console import Console
    from rich.table import Table

    from .config import format_size, load_client_config

    try:
        if servers:
            nodes = list(load_client_config({"servers": ",".join(servers)}, env={}, require_servers=False,
                                            override_labels={"servers": "SERVERS"}).servers)
        else:
            nodes = list(load_client_config(None, servers_hint="name them: memkv status HOST:PORT ...").servers)
        admins = _check_admins(admins, nodes)
        urls = [_admin_url(s, admins[i] if i < len(admins) else None) + "/v1/status" for i, s in enumerate(nodes)]
    except MemKVError as e:
        _fail(e)
    try:  # nodes ask other hosts for the auth key (--admin-auth); the config chain has it
        key = load_client_config(None, require_servers=False).auth_key
    except MemKVError:
        key = None
    headers = {"Authorization": f"Bearer {key.hex()}"} if key else {}
    docs = []
    for s, url in zip(nodes, urls):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                docs.append((s, json.load(r), None))
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code}"
            if e.code == 401:
                why = "refused: " + (f"{url} does not take MEMKV_AUTH_KEY (not the node's key)" if key else
                                     f"{url} wants the node's auth key: set MEMKV_AUTH_KEY")
            docs.append((s, None, why))
        except Exception as e:  # a node that is down is a row, not a crash
            docs.append((s, None, f"{url}: {getattr(e, 'reason', e)}"))
    if as_json:
        click.echo(json.dumps({s: d if d else {"error": err} for s, d, err in docs}, indent=2))
    else:
        t = Table(title="MemKV nodes")
        for col in ("server", "state", "node id", "keys", "DRAM used", "disk used", "ops", "uptime"):
            t.add_column(col)
        for s, d, err in docs:
            if d is None:
                t.add_row(s, "[red]refused[/red]" if err.startswith("refused") else "[red]down[/red]",
                          "-", "-", "-", "-", "-", "-")
                continue
            dram, disk = d["tiers"]["dram"], d["tiers"]["disk"]
            t.add_row(s, "[green]serving[/green]" if d["serving"] else "stopping", d["node_id"][:12], str(d["keys"]),
                      f"{format_size(dram['bytes_used'])} / {format_size(dram['capacity_bytes'])}",
                      f"{format_size(disk['bytes_used'])} / {format_size(disk['capacity_bytes'])}",
                      str(sum(d["ops"].values())), f"{d['uptime_s']:.0f}s")
        console = Console()
        if not console.is_terminal:  # pipes and logs get the whole table, not an 80-column squeeze
            console = Console(width=200)
        console.print(t)
        for s, d, err in docs:
            if d is None and err.startswith("refused"):
                console.print(f"{s} {err}", markup=False, highlight=False)
            elif d is None:  # the admin address tried, and why it failed
                hint = "" if admins else " (is its admin port not data port + 1? give --admin HOST:PORT)"
                console.print(f"{s} is down: {err}{hint}", markup=False, highlight=False)
    if any(d is None for _, d, _ in docs):
        sys.exit(1)


@main.command("rdma-info")
@click.option("--source", type=click.Choice(["auto", "pyverbs", "sysfs"]), default="auto", show_default=True,
              help="Where the facts come from (auto: pyverbs when importable, else sysfs).")
@click.option("--json", "as_json", is_flag=True, help="Print the devices as JSON.")
def rdma_info(source, as_json) -> None:
    """RDMA devices, ports, state, MTU and GIDs (what MEMKV_RDMA_DEVICES names)."""
    from rich.console import Console
    from rich.table import Table

    from . import _client
    from .rdma_info import describe, usable_summary

    try:
        used, devices = describe(source)
    except RuntimeError as e:
        _fail(e)
    built, why = _client.rdma_build_info()
    if as_json:
        click.echo(json.dumps({"source": used, "devices": devices, "rdma_transport_built": built,
                               "rdma_unavailable": why}, indent=2))
        return
    console = Console(width=None if sys.stdout.isatty() else 160)  # GIDs stay whole in pipes and logs
    if not devices:
        console.print(f"no RDMA devices ({used}); MemKV uses TCP here")
    for d in devices:
        t = Table(title=f"{d['name']} (node GUID {d['node_guid']}, from {used})")
        for col in ("port", "state", "link layer", "active MTU", "GID index", "GID", "type", "netdev"):
            t.add_column(col, no_wrap=col == "GID", min_width=39 if col == "GID" else None)
        for p in d["ports"]:
            first = True
            for g in p["gids"] or [{"index": "", "gid": "", "type": "", "netdev": ""}]:
                t.add_row(str(p["port"]) if first else "", p["state"] if first else "",
                          p["link_layer"] if first else "", str(p["active_mtu"] or "?") if first else "",
                          str(g["index"]), g["gid"], g["type"], g["netdev"])
                first = False
        console.print(t)
    usable = usable_summary(devices)
    if usable:
        console.print(f"MEMKV_RDMA_DEVICES={','.join(usable)} names every device with an active port")
    console.print("RDMA transport: " + ("available" if built and not why else f"unavailable ({why})"))


@main.command()
def keygen() -> None:
    """Print a fresh cluster auth key (64 hex) for MEMKV_AUTH_KEY."""
    from .auth import generate_auth_key

    click.echo(generate_auth_key())


@main.group()
def license() -> None:  # noqa: A001 (the command is called license)
    """Issue and verify signed MemKV license files."""


@license.command("keygen")
@click.option("--out", "out_path", required=True, help="Where to write the issuer's private key (PEM).")
def license_keygen(out_path) -> None:
    """Create a license issuer key pair; prints the public key for MEMKV_LICENSE_PUBKEY."""
    import os

    from .license import generate_issuer_key

    pem, public = generate_issuer_key()
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    click.echo(public)


@license.command("issue")
@click.option("--key", "key_path", required=True, help="Issuer private key (from `memkv license keygen`).")
@click.option("--licensee", required=True)
@click.option("--plan", default="enterprise", show_default=True)
@click.option("--days", default=365, show_default=True, help="Validity from now.")
@click.option("--max-nodes", default=0, show_default=True, help="0 = unlimited.")
@click.option("--out", "out_path", required=True, help="License file to write (e.g. minio.license).")
def license_issue(key_path, licensee, plan, days, max_nodes, out_path) -> None:
    """Issue a license signed by the issuer key."""
    from .license import issue_license, load_private_key

    try:
        text = issue_license(load_private_key(key_path), licensee=licensee, plan=plan, max_nodes=max_nodes,
                             expires_at=datetime.now(timezone.utc) + timedelta(days=days))
    except MemKVError as e:
        _fail(e)
    with open(out_path, "w") as f:
        f.write(text)
    click.echo(f"wrote {out_path} (plan={plan}, valid {days} days)")


@license.command("verify")
@click.argument("path", required=False)
@click.option("--pubkey", help="Trusted issuer public key (hex or file); else MEMKV_LICENSE_PUBKEY.")
def license_verify(path, pubkey) -> None:
    """Verify a license file (default: MEMKV_LICENSE)."""
    from .config import load_client_config
    from .license import load_trusted_pubkeys, verify_license

    try:
        cfg = load_client_config(None, require_servers=False)
        lic = verify_license(path or cfg.license, load_trusted_pubkeys(pubkey or cfg.license_pubkey))
    except MemKVError as e:
        _fail(e)
    click.echo(f"license verified plan={lic.plan} licensee={lic.licensee} expires={lic.expires_at:%Y-%m-%d} "
               f"id={lic.license_id}")


@main.group()
def tenant() -> None:
    """Add, list and remove tenants in a node's tenants file (send the node SIGHUP to apply)."""


_TENANTS_FILE = click.option("--file", "path", envvar="MEMKV_TENANTS", required=True,
                             help="The tenants file the node loads with --tenants (else MEMKV_TENANTS).")


def _quota(value: str | None, flag: str) -> int:
    from .config import parse_size

    return parse_size(value, flag) if value else 0


@tenant.command("add")
@click.argument("name")
@_TENANTS_FILE
@click.option("--dram-quota", help="Most DRAM the tenant may hold, e.g. 8GiB (default: no limit).")
@click.option("--disk-quota", help="Most shard space the tenant may hold, e.g. 100GiB (default: no limit).")
def tenant_add(name, path, dram_quota, disk_quota) -> None:
    """Add a tenant with fresh credentials; prints them once, as one JSON object."""
    from .tenants import load_or_empty, new_tenant, save_tenants

    try:
        tenants = load_or_empty(path)
        if name in tenants:
            raise MemKVError(f"tenant {name} already exists in {path}; `memkv tenant remove {name} --file {path}` "
                             "first to replace its credentials")
        t = new_tenant(name, dram_quota=_quota(dram_quota, "--dram-quota"),
                       disk_quota=_quota(disk_quota, "--disk-quota"))
        tenants[name] = t
        save_tenants(path, tenants)
    except MemKVError as e:
        _fail(e)
    click.echo(json.dumps(t.credentials()))


@tenant.command("list")
@_TENANTS_FILE
def tenant_list(path) -> None:
    """The tenants in the file, without their secrets (JSON lines)."""
    from .tenants import describe, load_tenants

    try:
        tenants = load_tenants(path)
    except MemKVError as e:
        _fail(e)
    for t in tenants.values():
        click.echo(json.dumps(describe(t)))


@tenant.command("remove")
@click.argument("name")
@_TENANTS_FILE
def tenant_remove(name, path) -> None:
    """Remove a tenant: after the node's next reload its connections are refused."""
    from .tenants import load_tenants, save_tenants

    try:
        tenants = load_tenants(path)
        if name not in tenants:
            raise MemKVError(f"no tenant {name} in {path} (`memkv tenant list --file {path}` shows them)")
        del tenants[name]
        save_tenants(path, tenants)
    except MemKVError as e:
        _fail(e)
    click.echo(json.dumps({"removed": name}))


@main.command("plugin-dir")
@click.option("--with-nixl", is_flag=True, help="Print a directory holding NIXL's own plugins plus MEMKV, for "
                                              "NIXL_PLUGIN_DIR (which replaces NIXL's default directory).")
def plugin_dir_cmd(with_nixl) -> None:
    """Print the folder that holds libplugin_MEMKV.so."""
    from . import nixl

    try:
        click.echo(nixl.merged_plugin_dir() if with_nixl else os.path.dirname(nixl.plugin_path()))
    except MemKVError as e:
        _fail(e)


@main.command("plugin-install")
@click.option("--nixl-dir", help="NIXL's plugin directory (default: the installed nixl-cu12 wheel's).")
def plugin_install(nixl_dir) -> None:
    """Symlink libplugin_MEMKV.so into NIXL's plugin directory (beside UCX, POSIX, OBJ, ...)."""
    from . import nixl

    try:
        click.echo(nixl.install_into_nixl(nixl_dir))
    except (MemKVError, OSError) as e:
        _fail(e)


@main.command()
@click.option("--servers", help="Benchmark an existing cluster (host:port,...); default: an embedded node.")
@click.option("--sizes", default="64KiB,1MiB,4MiB,16MiB", show_default=True, help="Value sizes.")
@click.option("--threads", default="1,4", show_default=True, help="Client thread counts.")
@click.option("--seconds", default=1.0, show_default=True, help="Target time per measurement.")
@click.option("--exists-keys", default=10000, show_default=True, help="Keys in the batched-exists test.")
@click.option("--json", "json_path", help="Also write the figures as JSON to this file ('-' for stdout).")
@click.option("--dram-only", is_flag=True, help="Embedded node without the shard tier.")
@click.option("--new-keys", default="1GiB", show_default=True, help="Bytes of new keys each put-of-new-keys row "
                                                                   "writes (and deletes).")
@click.option("--peers", default="auto", show_default=True,
              help="Other stores run through the same loop beside MemKV, each started here on free ports and stopped: "
                   "redis,lm,mooncake | all | none | auto (those installed; none with --servers).")
@click.option("--plot", "plot_path", help="Draw the figures, with the raw-socket ceiling, into this PNG (matplotlib).")
def bench(servers, sizes, threads, seconds, exists_keys, json_path, dram_only, new_keys, peers, plot_path) -> None:
    """Put/get throughput against the raw loopback socket limit; deletes all it wrote."""
    from .bench import run_bench

    try:
        ok = run_bench(servers=servers, sizes=sizes, threads=threads, seconds=seconds, exists_keys=exists_keys,
                       json_path=json_path, dram_only=dram_only, peers=peers, plot_path=plot_path,
                       new_keys=new_keys)
    except MemKVError as e:
        _fail(e)
    sys.exit(0 if ok else 1)


@main.command("bench-nixl")
@click.option("--blocks", default=16, show_default=True, help="Blocks per request.")
@click.option("--block-size", default="4MiB", show_default=True)
@click.option("--seconds", default=1.0, show_default=True, help="Target time per measurement.")
@click.option("--rounds", default=3, show_default=True, help="Rounds of every path (medians are reported).")
@click.option("--shards", is_flag=True, help="Embedded node with its shard tier (default: DRAM only).")
@click.option("--json", "json_path", help="Also write the figures as JSON to this file ('-' for stdout).")
def bench_nixl(blocks, block_size, seconds, rounds, shards, json_path) -> None:
    """NIXL + MEMKV against the plain client, the raw socket and NIXL's POSIX backend."""
    from .bench_nixl import run_bench_nixl
    from .config import parse_size

    try:
        ok = run_bench_nixl(blocks=blocks, block_size=parse_size(block_size, "--block-size"), seconds=seconds,
                            shards=shards, json_path=json_path, rounds=rounds)
    except MemKVError as e:
        _fail(e)
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--engine", type=click.Choice(["nixl", "vllm"]), default="nixl", show_default=True,
              help="nixl: KVBM-shaped blocks through NIXL's MEMKV backend; vllm: real vLLM (CPU) serving through "
                   "LMCache's MP server and MemKV, two replicas.")
@click.option("--blocks", default=64, show_default=True, help="(nixl) KV blocks to offload and onboard.")
@click.option("--block-size", default="2MiB", show_default=True, help="(nixl) Bytes per block.")
@click.option("--client-only", is_flag=True, help="(nixl) Use the Python client instead of NIXL and the MEMKV plugin.")
@click.option("--model", type=click.Choice(["tiny", "bench"]), default="tiny", show_default=True,
              help="(vllm) The local model to write and serve.")
@click.option("--prompt-tokens", default=2048, show_default=True, help="(vllm) Prompt length.")
@click.option("--workdir", default=None, help="(vllm) Keep logs and data here instead of a temp dir.")
def demo(engine, blocks, block_size, client_only, model, prompt_tokens, workdir) -> None:
    """The main job on an embedded default: offload KV, restart or switch replica, onboard, verify."""
    from .config import parse_size

    try:
        if engine == "vllm":
            from .engine.demo import run_vllm_demo

            ok = run_vllm_demo(model=model, prompt_len=prompt_tokens, workdir=workdir)
        else:
            from .demo import run_demo

            ok = run_demo(blocks=blocks, block_size=parse_size(block_size, "--block-size"), client_only=client_only)
    except MemKVError as e:
        _fail(e)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
