"""Read and write Hugging Face checkpoint directories (config.json + safetensors, single or sharded).

Headers are validated by `safetensors` itself; tensors are then read with one `readinto` from the file
straight into the caller's array (no memory map stays open, no intermediate copy), so peak host memory
stays near the tensors actually held. Writing streams each tensor to disk as it is produced, into shards
of a bounded size planned up front, inside a temporary directory renamed into place only when complete.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Files copied along with the weights (tokenizer, chat template, generation defaults).
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
              "chat_template.json")
NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
SAFETENSORS_CODES = {np.dtype(v): k for k, v in
                     {"F64": np.float64, "F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}.items()}


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or inconsistent; the message names the file or tensor."""


def numpy_dtype(name: str) -> np.dtype:
    if name not in NUMPY_DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {sorted(NUMPY_DTYPES)}")
    return np.dtype(NUMPY_DTYPES[name])


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: its dtype code, shape and absolute byte range in the file."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class HFCheckpointReader:
    """Index over a HF checkpoint directory: config, tensor -> file map, and per-tensor reads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory")
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{config_path}: config.json is missing")
        try:
            self.config: dict[str, Any] = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config_path}: invalid JSON ({err})") from err
        self._headers: dict[str, dict[str, TensorEntry]] = {}
        self.weight_map = self._weight_map()

    def _weight_map(self) -> dict[str, str]:
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index}: not a safetensors index ({err!r})") from err
            for file in sorted(set(weight_map.values())):
                if not (self.path / file).is_file():
                    raise CheckpointError(f"{self.path / file}: weight file listed in {INDEX_FILE} is missing")
            return dict(weight_map)
        single = self.path / SINGLE_FILE
        if single.is_file():
            return {name: SINGLE_FILE for name in self._header(SINGLE_FILE)}
        found = sorted(p.name for p in self.path.glob("*.safetensors"))
        if len(found) == 1:
            return {name: found[0] for name in self._header(found[0])}
        raise CheckpointError(
            f"{self.path}: no weights found (expected {SINGLE_FILE} or {INDEX_FILE}; "
            f"{'found ' + ', '.join(found) if found else 'no .safetensors files'}; .bin checkpoints: convert with "
            "transformers' save_pretrained(safe_serialization=True) first)")

    @contextlib.contextmanager
    def _open(self, file: str) -> Iterator[Any]:
        full = self.path / file
        try:
            with safe_open(full, framework="np") as handle:
                yield handle
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own error types for corrupt / truncated files
            raise CheckpointError(f"{full}: cannot read safetensors file ({err})") from err

    def _header(self, file: str) -> dict[str, TensorEntry]:
        """Tensor entries of one file; safetensors validates the header (and the file's length) first."""
        if file not in self._headers:
            with self._open(file) as handle:
                names = set(handle.keys())
            with open(self.path / file, "rb") as raw:  # the validated header, for the byte offsets
                length = int.from_bytes(raw.read(8), "little")
                header = json.loads(raw.read(length))
            self._headers[file] = {
                name: TensorEntry(v["dtype"], tuple(v["shape"]), 8 + length + v["data_offsets"][0],
                                  8 + length + v["data_offsets"][1])
                for name, v in header.items() if name in names}
        return self._headers[file]

    def names(self) -> list[str]:
        return list(self.weight_map)

    def entry(self, name: str) -> TensorEntry:
        """The header entry of one tensor; raises naming the tensor (and file) when it is absent."""
        if name not in self.weight_map:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        file = self.weight_map[name]
        header = self._header(file)
        if name not in header:
            raise CheckpointError(f"{self.path / file}: tensor {name!r} listed in the index is not in the file")
        return header[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entry(name).shape

    def stored_dtype(self, name: str) -> np.dtype:
        """The numpy dtype a tensor is stored in."""
        code = self.entry(name).dtype
        for dtype, known in SAFETENSORS_CODES.items():
            if known == code:
                return dtype
        raise CheckpointError(f"{self.path / self.weight_map[name]}: tensor {name!r} has dtype {code}; expected "
                              f"one of {sorted(SAFETENSORS_CODES.values())}")

    def read(self, name: str, dtype: np.dtype | None = None) -> np.ndarray:
        """One tensor as a new numpy array (optionally cast); raises naming the tensor and file on failure."""
        out = np.empty(self.shape(name), self.stored_dtype(name) if dtype is None else dtype)
        self.read_into(name, out)
        return out

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Fill `out` (the tensor's shape, any float dtype) with one tensor, read from the file straight into
        it when it is C-contiguous in the stored dtype (otherwise through one temporary)."""
        entry, file = self.entry(name), self.path / self.weight_map[name]
        if tuple(out.shape) != entry.shape:
            raise CheckpointError(f"{file}: tensor {name!r} has shape {list(entry.shape)}, not {list(out.shape)}")
        stored = self.stored_dtype(name)
        target = out if out.dtype == stored and out.flags.c_contiguous else np.empty(entry.shape, stored)
        buffer, got = memoryview(target.reshape(-1).view(np.uint8)), 0
        try:
            with open(file, "rb", buffering=0) as raw:
                raw.seek(entry.begin)
                while got < len(buffer):  # one read(2) returns at most ~2 GiB
                    count = raw.readinto(buffer[got:])
                    if not count:
                        break
                    got += count
        except OSError as err:
            raise CheckpointError(f"{file}: cannot read tensor {name!r} ({err})") from err
        if got != entry.end - entry.begin:
            raise CheckpointError(f"{file}: tensor {name!r} is truncated ({got} of {entry.end - entry.begin} bytes)")
        if target is not out:
            out[...] = target

    def total_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in set(self.weight_map.values()))

    def side_files(self) -> list[Path]:
        return [self.path / f for f in SIDE_FILES if (self.path / f).is_file()]


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000 -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not match:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 5GB, 500MB or a byte count")
    number, unit = float(match.group(1)), match.group(2).rstrip("B")
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    return int(number * scale[unit])


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `out` only if the block completes."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: destination exists and is not empty (pass overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # unlike tempfile.mkdtemp (0700), honours the umask: the result is as readable as any directory
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a tensor to be written, known before its data is."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Split tensors, in order, into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def safetensors_header(shard: Sequence[TensorSpec]) -> bytes:
    """The 8-byte length plus JSON header of a safetensors file holding `shard` back to back, padded with
    spaces so the data starts 8-byte aligned (the layout `safetensors.save_file` writes)."""
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in shard:
        entries[spec.name] = {"dtype": SAFETENSORS_CODES[np.dtype(spec.dtype)], "shape": list(spec.shape),
                              "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors_shards(directory: Path, specs: Sequence[TensorSpec], tensors: Iterable[tuple[str, np.ndarray]],
                             max_shard_bytes: int) -> None:
    """Write (name, array) pairs, arriving in `specs` order, into shards of at most `max_shard_bytes`, plus the
    index when sharded. Each array goes to disk as it arrives, so only the one in hand is held.

    `safetensors.save_file` needs a whole file's tensors in memory at once; planning the shards from the specs
    lets each header be written first and the data streamed after it.
    """
    shards = plan_shards(specs, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
                                                     for k in range(len(shards))]
    arriving = iter(tensors)
    for file, shard in zip(names, shards):
        with open(directory / file, "wb") as out:
            out.write(safetensors_header(shard))
            for spec in shard:
                name, array = next(arriving, (None, None))
                if name != spec.name or tuple(array.shape) != spec.shape or array.dtype != spec.dtype:
                    got = "nothing" if name is None else f"{name} {list(array.shape)} {array.dtype}"
                    raise ValueError(f"expected tensor {spec.name} {list(spec.shape)} {np.dtype(spec.dtype)}, "
                                     f"got {got}")
                out.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
                del array  # hold only the tensor in hand
    if next(arriving, None) is not None:
        raise ValueError(f"more tensors than the {len(specs)} planned")
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(s.nbytes for s in specs)},
                 "weight_map": {spec.name: file for file, shard in zip(names, shards) for spec in shard}}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
