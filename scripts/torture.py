#!/usr/bin/env python3
"""Crash torture: writers, SIGKILL at a random moment, restart, verify.

Each loop starts the node on the same data directory, runs writer threads
(each its own client) doing single puts, batch puts, multi-part puts,
overwrites and deletes of deterministic values, SIGKILLs the node at a
random moment, restarts it and reads back every key still kept (the last
KEEP_LOOPS loops' keys; older ones are checked once more, then deleted so
the data directory stays bounded over hundreds of loops). A key's
value is a pure function of (key, version), so any byte read back is
checked against what was written:

- wrong:   bytes that match no version ever written for that key;
- stale:   an older version than one the node had to keep (bytes that equal
           a newer version too, as short values can, count as the newer);
- lost:    a miss for a key whose value the node had to keep (not after a
           delete was sent: the kill may come between the delete and its answer);
- phantom: a value for a key that was never written, or an incomplete
           multi-part object;
- resurrected: a value back after a delete acknowledged with --fsync
           always (a failure: such deletes are durable when acknowledged).
           With --fsync interval a delete is durable at the next sync; values
           back after those are counted apart and are not failures.

What the node "had to keep": with --fsync always, every acknowledged put;
with --fsync interval, every put acknowledged before a checkpoint at which
the writers paused and the node reported nothing dirty for two sync
intervals. Values found after a restart came from the shards, so they must
survive every later loop too.

After the loops, torn-write rounds damage the data directory of a cleanly
stopped node (truncated record tails, flipped bytes, a truncated or corrupt
index snapshot, a stray half-written temp file) and check that it starts,
serves every undamaged key exactly and every damaged one as a miss.

usage: python3 scripts/torture.py [--loops N] [--fsync always|interval|both] [--writers N]
                                  [--torn N] [--seed S] [--json FILE]
The last line is the summary; the exit status is 1 on any wrong, stale,
lost or phantom value, or a node that failed to start.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from node_harness import NodeProc  # noqa: E402

from nixl_memkv import Client  # noqa: E402
from nixl_memkv.auth import generate_auth_key  # noqa: E402

for _var, _val in (("LMCACHE_TRACK_USAGE", "false"), ("VLLM_NO_USAGE_STATS", "1"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_var, _val)

SIZES = (1, 100, 4096, 65536 + 17, 300_000, 1 << 20, (2 << 20) + 3)
INTERVAL_MS = 100
# A restart after a crash scans every record: on a machine busy with other
# work that has taken 25 s, so starts get longer than the test harness's 30 s.
START_TIMEOUT_S = 180.0
KEEP_LOOPS = 4  # keys of this many recent loops stay in the store and are checked after every crash


def value_of(key: str, version: int, size: int) -> bytes:
    """Deterministic bytes for (key, version): a SHAKE stream, so any two differ."""
    return hashlib.shake_128(f"{key}#{version}".encode()).digest(size)


@dataclass
class KeyLog:
    """Everything done to one key, in order."""
    size: int
    versions: list[int] = field(default_factory=list)  # versions attempted, in order
    pending: list[int] = field(default_factory=list)   # versions acknowledged since the last verification
    must_keep: int = -1        # the node must return this version or a later one (-1: nothing owed)
    deleted_acked: bool = False  # the last acknowledged op was a delete
    delete_sent: bool = False  # a delete was sent: if the kill beat its answer, it may have happened
    delete_required: bool = False  # that delete was acknowledged before a checkpoint / with fsync always
    acked: list[tuple[int, str, float]] = field(default_factory=list)  # (version, how, wall time) of each ack


class Ledger:
    def __init__(self) -> None:
        self.keys: dict[str, KeyLog] = {}
        self.mu = threading.Lock()
        self.acks = self.batch_acks = self.part_acks = self.deletes = 0
        self.checkpointed_at = self.killed_at = 0.0  # wall times, for failure reports

    def attempt(self, key: str, size: int) -> int:
        with self.mu:
            log = self.keys.setdefault(key, KeyLog(size))  # every version of a key has one size
            v = len(log.versions) + 1
            log.versions.append(v)
            return v

    def ack(self, key: str, version: int, kind: str) -> None:
        with self.mu:
            log = self.keys[key]
            log.pending.append(version)
            log.acked.append((version, kind, time.time()))
            log.deleted_acked = False
            self.acks += 1
            if kind == "batch":
                self.batch_acks += 1
            elif kind == "part":
                self.part_acks += 1

    def delete_sent(self, key: str) -> None:
        with self.mu:
            self.keys[key].delete_sent = True

    def delete_acked(self, key: str) -> None:
        with self.mu:
            self.keys[key].deleted_acked = True
            self.deletes += 1

    def checkpoint(self, deletes: bool) -> None:
        """Everything acknowledged since the last verification is durable
        (what was owed before that, verify() already settled); `deletes`:
        acknowledged deletes too (fsync=always)."""
        with self.mu:
            self.checkpointed_at = time.time()
            for log in self.keys.values():
                if log.pending:
                    log.must_keep = max(log.must_keep, log.pending[-1])
                if log.deleted_acked and deletes:
                    log.delete_required = True


def writer(w: int, loop: int, client: Client, ledger: Ledger, rng: random.Random, stop: threading.Event,
           pause: threading.Event, paused: threading.Semaphore, errors: list,
           dying: threading.Event | None = None) -> None:
    mine: list[str] = []
    i = 0
    while not stop.is_set():
        if pause.is_set():
            paused.release()
            while pause.is_set() and not stop.is_set():
                time.sleep(0.005)
            continue
        i += 1
        op = rng.random()
        try:
            if op < 0.10 and mine:  # overwrite one of ours
                key = rng.choice(mine)
                size = ledger.keys[key].size
                v = ledger.attempt(key, size)
                client.put(key, value_of(key, v, size))
                ledger.ack(key, v, "put")
            elif op < 0.16 and mine:  # delete one of ours
                key = mine.pop(rng.randrange(len(mine)))
                ledger.delete_sent(key)
                client.remove(key)
                ledger.delete_acked(key)
            elif op < 0.40:  # a batch of 8
                keys = [f"w{w}/l{loop}/b{i}/{j}" for j in range(8)]
                sizes = [rng.choice(SIZES[:5]) for _ in keys]
                vs = [ledger.attempt(k, s) for k, s in zip(keys, sizes)]
                client.batch_put(keys, [value_of(k, v, s) for k, v, s in zip(keys, vs, sizes)])
                for k, v in zip(keys, vs):
                    ledger.ack(k, v, "batch")
                mine.extend(keys)
            elif op < 0.52:  # a multi-part object, parts in random order
                key = f"w{w}/l{loop}/m{i}"
                size = rng.choice(SIZES[3:])
                v = ledger.attempt(key, size)
                data = value_of(key, v, size)
                cuts = sorted({0, size, *(rng.randrange(size) for _ in range(2))})
                parts = list(zip(cuts, cuts[1:]))
                rng.shuffle(parts)
                done = False
                for a, b in parts:
                    done = client.put_part(key, loop * 1_000_000 + i, size, a, data[a:b]) or done
                if not done:
                    raise AssertionError(f"multi-part object {key} never reported complete")
                ledger.ack(key, v, "part")
                mine.append(key)
            else:
                key = f"w{w}/l{loop}/p{i}"
                size = rng.choice(SIZES)
                v = ledger.attempt(key, size)
                client.put(key, value_of(key, v, size))
                ledger.ack(key, v, "put")
                mine.append(key)
        except Exception as e:  # noqa: BLE001 - the node is being killed under us
            if not stop.is_set() and not (dying and dying.is_set()):
                errors.append(f"writer {w}: {type(e).__name__}: {e}")
            return


@dataclass
class Verdict:
    checked: int = 0
    present: int = 0
    wrong: list = field(default_factory=list)
    stale: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    phantom: list = field(default_factory=list)
    resurrected: list = field(default_factory=list)
    undeleted: int = 0  # back after an interval-mode delete not yet synced: allowed
    cut_deletes: int = 0  # gone after a delete the kill cut off before its answer: allowed


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def describe(key: str, log: KeyLog, ledger: "Ledger", data_dir: str | None) -> str:
    """What was done to `key` and what its record file holds, for a failure report."""
    acks = ", ".join(f"v{v} {how} acked {_clock(t)}" for v, how, t in log.acked)
    facts = (f"acks: {acks or 'none'}; last checkpoint {_clock(ledger.checkpointed_at) if ledger.checkpointed_at else '-'}"
             f", kill {_clock(ledger.killed_at) if ledger.killed_at else '-'}")
    if data_dir:  # the record's place and header layout: ShardFiles::path_for and encode_header
        digest = hashlib.sha256(key.encode()).hexdigest()
        path = os.path.join(data_dir, "shards", digest[:2], digest[:32])
        try:
            with open(path, "rb") as f:
                written_ns = int.from_bytes(f.read(40)[32:40], "little")
            facts += f"; record {path}: written {_clock(written_ns / 1e9)}, mtime {_clock(os.path.getmtime(path))}"
        except OSError as e:
            facts += f"; record {path}: {e.strerror}"
    return facts


def verify(client: Client, ledger: Ledger, strays: list[str], data_dir: str | None = None) -> Verdict:
    out = Verdict()
    keys = list(ledger.keys)
    for start in range(0, len(keys), 64):
        chunk = keys[start:start + 64]
        for key, got in zip(chunk, client.batch_get(chunk)):
            log = ledger.keys[key]
            out.checked += 1
            log.pending.clear()
            if got is None:
                # An overwrite removes the old shard before the new one lands
                # (a crash in between reads as a miss, never as the old value),
                # so a miss is owed nothing once a newer version was attempted;
                # nor once a delete was sent (the kill may have beaten its answer).
                superseded = log.versions and log.versions[-1] > log.must_keep
                if log.must_keep > 0 and not superseded:
                    if not log.delete_sent:
                        out.lost.append(key)
                    elif not log.deleted_acked:
                        out.cut_deletes += 1
                log.must_keep = -1  # gone: nothing is owed from now on
                continue
            out.present += 1
            # The newest version with these bytes: short values of two versions
            # can be equal (1-byte values are, 1 time in 256), and equal bytes
            # are not an older value.
            match = max((v for v in log.versions if len(got) == log.size and got == value_of(key, v, log.size)),
                        default=None)
            if match is None:
                out.wrong.append(key)
                continue
            if match < log.must_keep:
                out.stale.append(f"{key} v{match} < v{log.must_keep}: {describe(key, log, ledger, data_dir)}")
            if log.deleted_acked and log.delete_required:
                out.resurrected.append(key)
            elif log.deleted_acked:
                out.undeleted += 1
            # Read back from the shards after a restart: owed from now on.
            log.must_keep = match
            log.deleted_acked = False
            log.delete_required = False
    for key in strays:  # never written at all
        if client.get(key) is not None:
            out.phantom.append(key)
    return out


def retire(client: Client, ledger: Ledger, before_loop: int) -> int:
    """Deletes the keys of loops before `before_loop` (already verified) and forgets them."""
    old = [k for k in ledger.keys if int(k.split("/")[1][1:]) < before_loop]
    for start in range(0, len(old), 256):
        client.batch_remove(old[start:start + 256])
    for k in old:
        del ledger.keys[k]
    return len(old)


def wait_clean(node: NodeProc, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.status()["dirty_bytes"] == 0:
            time.sleep(2 * INTERVAL_MS / 1000 + 0.05)
            return True
        time.sleep(0.01)
    return False


def crash_loop(node: NodeProc, auth_key: str, ledger: Ledger, loop: int, fsync: str, writers: int,
               rng: random.Random) -> tuple[Verdict, list[str], float]:
    clients = [Client(servers=node.address, auth_key=auth_key, op_timeout_ms=15000, connect_timeout_ms=2000,
                      transport="tcp") for _ in range(writers)]
    stop, pause, dying = threading.Event(), threading.Event(), threading.Event()
    paused = threading.Semaphore(0)
    errors: list[str] = []
    threads = [threading.Thread(target=writer, args=(w, loop, clients[w], ledger, random.Random(rng.random()), stop,
                                                     pause, paused, errors, dying), daemon=True)
               for w in range(writers)]
    for t in threads:
        t.start()
    run_for = rng.uniform(0.3, 2.0)
    if fsync == "interval":
        # A checkpoint part-way: writers pause, the node reports nothing dirty
        # for two sync intervals, and everything acknowledged is then owed.
        time.sleep(run_for * rng.uniform(0.2, 0.8))
        pause.set()
        for _ in threads:
            if not paused.acquire(timeout=30):
                errors.append("a writer did not pause for the checkpoint")
                break
        if wait_clean(node):
            ledger.checkpoint(deletes=False)
        else:
            errors.append("the node stayed dirty for 30 s at a checkpoint")
        pause.clear()
    time.sleep(run_for if fsync == "always" else run_for * rng.uniform(0.2, 0.8))
    if fsync == "always":
        ledger.checkpoint(deletes=True)  # every acknowledgement so far was durable when it was given
    dying.set()  # from here on, writers' errors are the kill's doing
    ledger.killed_at = time.time()
    node.kill()
    stop.set()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    if fsync == "always":
        ledger.checkpoint(deletes=True)  # acks that raced the kill were durable too
    t0 = time.monotonic()
    node.start(wait=False).wait_ready(START_TIMEOUT_S)
    restart_s = time.monotonic() - t0
    with Client(servers=node.address, auth_key=auth_key, transport="tcp", op_timeout_ms=30000) as c:
        verdict = verify(c, ledger, [f"never/{loop}/{i}" for i in range(8)], node.data_dir)
        retire(c, ledger, loop + 1 - KEEP_LOOPS)
    return verdict, errors, restart_s


def torn_round(node: NodeProc, auth_key: str, ledger: Ledger, rng: random.Random) -> dict:
    """Damages a cleanly stopped node's files; it must start and never serve wrong bytes."""
    node.stop()
    records = [f for f in glob.glob(os.path.join(node.data_dir, "shards", "*", "*")) if os.path.isfile(f)]
    damaged = rng.sample(records, min(len(records), rng.randint(1, 6)))
    for path in damaged:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            how = rng.choice(("truncate", "flip", "zero-header"))
            if how == "truncate":
                f.truncate(rng.randrange(max(1, size)))
            elif how == "flip":
                at = rng.randrange(size)
                f.seek(at)
                b = f.read(1)
                f.seek(at)
                f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
            else:
                f.write(b"\0" * min(size, 64))
    snapshots = [p for p in glob.glob(os.path.join(node.data_dir, "**", "*index*"), recursive=True) if os.path.isfile(p)]
    damage_snapshots = snapshots if rng.random() < 0.67 else []  # else: a good snapshot over damaged records
    for path in damage_snapshots:
        with open(path, "r+b") as f:
            if rng.random() < 0.5:
                f.truncate(rng.randrange(max(1, os.path.getsize(path))))
            else:
                f.seek(rng.randrange(max(1, os.path.getsize(path))))
                f.write(os.urandom(16))
    if records:  # a half-written temp file next to a record, as a crash mid-write leaves
        with open(records[0] + ".tmp-torture", "wb") as f:
            f.write(os.urandom(5000))
    node.start(wait=False).wait_ready(START_TIMEOUT_S)
    with Client(servers=node.address, auth_key=auth_key, transport="tcp", op_timeout_ms=30000) as c:
        # Damaged records may now read as misses: nothing is owed for them.
        for log in ledger.keys.values():
            log.must_keep = -1
        v = verify(c, ledger, [])
    return {"damaged_files": len(damaged), "snapshots_damaged": len(damage_snapshots), "wrong": len(v.wrong),
            "phantom": len(v.phantom), "present": v.present,
            "corrupt_records": node.status()["corrupt_records"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", type=int, default=200, help="SIGKILL loops (default 200)")
    ap.add_argument("--fsync", choices=("always", "interval", "both"), default="both",
                    help="fsync mode; both alternates per loop (default)")
    ap.add_argument("--writers", type=int, default=3, help="writer threads, one client each (default 3)")
    ap.add_argument("--torn", type=int, default=5, help="torn-write rounds after the loops (default 5)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON to this file")
    ap.add_argument("--stop-on-failure", action="store_true",
                    help="stop after the first loop that finds a failure, leaving its data directory as it was")
    args = ap.parse_args()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the node is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    auth_key = generate_auth_key()
    tmp = tempfile.mkdtemp(prefix="memkv-torture-")
    totals = {"loops": 0, "acks": 0, "batch_acks": 0, "part_acks": 0, "deletes": 0, "checked": 0, "wrong": 0,
              "stale": 0, "lost": 0, "phantom": 0, "resurrected": 0, "undeleted_interval": 0, "cut_deletes": 0, "writer_errors": 0,
              "restart_s_max": 0.0}
    examples: list[str] = []
    ledger = Ledger()
    node = None
    ok = True
    t_start = time.monotonic()
    try:
        for loop in range(args.loops):
            fsync = args.fsync if args.fsync != "both" else ("always", "interval")[loop % 2]
            # One data directory for the whole run: each restart also recovers every earlier loop's values.
            if node:
                node.stop()
            node = NodeProc(os.path.join(tmp, "data"), auth_key, "--fsync", fsync, "--fsync-interval-ms",
                            str(INTERVAL_MS), "--dram-capacity", "256MiB", "--disk-capacity", "8GiB")
            node.start(wait=False).wait_ready(START_TIMEOUT_S)
            acks0 = ledger.acks
            verdict, errors, restart_s = crash_loop(node, auth_key, ledger, loop, fsync, args.writers, rng)
            totals["loops"] += 1
            totals["checked"] += verdict.checked
            totals["restart_s_max"] = max(totals["restart_s_max"], restart_s)
            for name in ("wrong", "stale", "lost", "phantom", "resurrected"):
                bad = getattr(verdict, name)
                totals[name] += len(bad)
                examples += [f"loop {loop} {name}: {k}" for k in bad[:3]]
            totals["undeleted_interval"] += verdict.undeleted
            totals["cut_deletes"] += verdict.cut_deletes
            totals["writer_errors"] += len(errors)
            examples += [f"loop {loop}: {e}" for e in errors[:2]]
            print(f"loop {loop + 1}/{args.loops} fsync={fsync}: +{ledger.acks - acks0} acks, {verdict.checked} keys "
                  f"checked ({verdict.present} present), wrong {len(verdict.wrong)}, stale {len(verdict.stale)}, "
                  f"lost {len(verdict.lost)}, phantom {len(verdict.phantom)}, restart {restart_s:.2f} s", flush=True)
            if args.stop_on_failure and (errors or any(getattr(verdict, n) for n in
                                                       ("wrong", "stale", "lost", "phantom", "resurrected"))):
                print("torture: stopping at the first failure (--stop-on-failure)", flush=True)
                args.torn = 0
                break
        torn = []
        for r in range(args.torn):
            result = torn_round(node, auth_key, ledger, rng)
            torn.append(result)
            print(f"torn {r + 1}/{args.torn}: {result}", flush=True)
        totals["torn_rounds"] = len(torn)
        totals["torn_damaged_files"] = sum(t["damaged_files"] for t in torn)
        totals["torn_wrong"] = sum(t["wrong"] + t["phantom"] for t in torn)
    except RuntimeError as e:  # a node that did not start
        print(f"torture: {e}", file=sys.stderr)
        ok = False
    finally:
        totals.update(acks=ledger.acks, batch_acks=ledger.batch_acks, part_acks=ledger.part_acks,
                      deletes=ledger.deletes)
        if node:
            node.stop()
        if isinstance(sys.exc_info()[1], (SystemExit, KeyboardInterrupt)):
            shutil.rmtree(tmp, ignore_errors=True)  # interrupted: nothing to look at
    bad = not ok or any(totals[k] for k in ("wrong", "stale", "lost", "phantom", "resurrected", "writer_errors"))
    if bad:
        print(f"torture: data directory and node logs kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    for line in examples[:20]:
        print("  " + line)
    ok = ok and not any(totals[k] for k in ("wrong", "stale", "lost", "phantom", "resurrected", "writer_errors")) \
        and not totals.get("torn_wrong", 1)
    totals.update(seed=seed, seconds=round(time.monotonic() - t_start, 1), ok=ok, fsync=args.fsync,
                  writers=args.writers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(totals, f, indent=2)
    print(f"torture: {totals['loops']} loops (fsync {args.fsync}, {args.writers} writers, seed {seed}): "
          f"{totals['acks']:,} acks ({totals['batch_acks']:,} in batches, {totals['part_acks']:,} multi-part), "
          f"{totals['deletes']:,} deletes; {totals['wrong']} wrong, {totals['stale']} stale, {totals['lost']} lost, "
          f"{totals['phantom']} phantom, {totals['resurrected']} resurrected deletes "
          f"({totals['undeleted_interval']} interval-mode deletes not yet synced came back, "
          f"{totals['cut_deletes']} deletes cut off by the kill took effect, as allowed); "
          f"torn writes: {totals.get('torn_rounds', 0)} rounds, {totals.get('torn_damaged_files', 0)} files damaged, "
          f"{totals.get('torn_wrong', 0)} wrong; slowest restart {totals['restart_s_max']:.2f} s; "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
