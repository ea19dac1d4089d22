"""Read and write Hugging Face checkpoint directories (config.json + safetensors, single or sharded).

Reading opens a file per tensor request and closes it again, so memory-mapped pages never pile up:
peak host memory stays near the tensors actually held. Writing streams tensors into shards of a
bounded size, inside a temporary directory that is renamed into place only when complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Files copied along with the weights (tokenizer, chat template, generation defaults).
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
              "chat_template.json")
NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or inconsistent; the message names the file or tensor."""


def numpy_dtype(name: str) -> np.dtype:
    if name not in NUMPY_DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {sorted(NUMPY_DTYPES)}")
    return np.dtype(NUMPY_DTYPES[name])


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
        self._headers: dict[str, dict[str, tuple[str, list[int]]]] = {}
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

    def _header(self, file: str) -> dict[str, tuple[str, list[int]]]:
        if file not in self._headers:
            with self._open(file) as handle:
                entries = {}
                for name in handle.keys():
                    sl = handle.get_slice(name)
                    entries[name] = (sl.get_dtype(), list(sl.get_shape()))
            self._headers[file] = entries
        return self._headers[file]

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        file = self._file_of(name)
        header = self._header(file)
        if name not in header:
            raise CheckpointError(f"{self.path / file}: tensor {name!r} listed in the index is not in the file")
        return tuple(header[name][1])

    def _file_of(self, name: str) -> str:
        if name not in self.weight_map:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        return self.weight_map[name]

    def read(self, name: str, dtype: np.dtype | None = None) -> np.ndarray:
        """One tensor as a numpy array (optionally cast); raises naming the tensor and file on failure."""
        file = self._file_of(name)
        with self._open(file) as handle:
            try:
                array = handle.get_tensor(name)
            except Exception as err:
                raise CheckpointError(f"{self.path / file}: cannot read tensor {name!r} ({err})") from err
        return array if dtype is None or array.dtype == dtype else array.astype(dtype)

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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_safetensors_shards(directory: Path, tensors: Iterable[tuple[str, np.ndarray]], max_shard_bytes: int) -> None:
    """Write (name, array) pairs into shards of at most `max_shard_bytes`, plus the index when sharded.

    Only one shard's tensors are held at a time.
    """
    shard: dict[str, np.ndarray] = {}
    shard_bytes, written, weight_map, total = 0, [], {}, 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            name = f"shard-{len(written):05d}.tmp"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            written.append((name, list(shard)))
            shard, shard_bytes = {}, 0

    for name, array in tensors:
        if shard and shard_bytes + array.nbytes > max_shard_bytes:
            flush()
        shard[name] = np.ascontiguousarray(array)
        shard_bytes += array.nbytes
        total += array.nbytes
    flush()
    if len(written) == 1:
        os.replace(directory / written[0][0], directory / SINGLE_FILE)
        return
    for k, (tmp_name, names) in enumerate(written):
        final = f"model-{k + 1:05d}-of-{len(written):05d}.safetensors"
        os.replace(directory / tmp_name, directory / final)
        weight_map.update({n: final for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
