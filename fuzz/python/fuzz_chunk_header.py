"""Atheris target: the LMCache chunk header (memkv_lmcache/chunk_header.py)
as the plugin reads it back from a stored value. A cold read fetches the
first MAX_HEADER_LEN bytes of the value and decodes them; whatever is
stored there (another writer's bytes, a torn or foreign value) must either
decode to a layout that re-encodes to a header decoding the same, or raise
HeaderError, never anything else.

Run through scripts/fuzz.sh (libFuzzer flags pass through)."""

import importlib.util
import pathlib
import sys

import atheris


def _load(name: str, relpath: str):
    """The module from this checkout, by path (no LMCache import needed)."""
    path = pathlib.Path(__file__).resolve().parents[2] / relpath
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


chunk_header = _load("memkv_fuzzed_chunk_header", "memkv_lmcache/chunk_header.py")
HeaderError = chunk_header.HeaderError
atheris.instrument_func(chunk_header.decode)
atheris.instrument_func(chunk_header._read_short)
atheris.instrument_func(chunk_header.ChunkLayout.encode)


def test_one_input(data: bytes) -> None:
    # What _probe_layouts does with a value of len(data) bytes.
    buf = bytearray(chunk_header.MAX_HEADER_LEN)
    buf[:min(len(data), len(buf))] = data[:len(buf)]
    size = len(data)
    try:
        layout = chunk_header.decode(buf[:min(size, len(buf))])
    except HeaderError:
        return
    header_len = chunk_header.header_len_of(buf)
    if header_len < 16 or header_len % 64 or header_len > min(size, len(buf)):
        raise AssertionError(f"decoded a header whose length {header_len} it should have refused")
    if not 0 <= layout.payload_len < 1 << 64:
        raise AssertionError(f"payload length {layout.payload_len} out of range")
    if len(layout.dtypes) != len(layout.shapes):
        raise AssertionError("dtypes and shapes differ in number")
    again = chunk_header.decode(layout.encode())
    if again != layout:
        raise AssertionError(f"re-encoded header decodes differently: {layout} != {again}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
