"""Is a registered folder whole enough to serve? The check the registry runs before a version becomes active.

A servable folder is either a PEFT adapter (``adapter_config.json`` naming its base, and adapter weights)
or a full model (``config.json`` and weights). Weights are checked without loading them (no torch): a
safetensors file must have a readable header whose tensors end exactly at the end of the file (a
truncated or overwritten file fails), a ``.bin`` must be an intact zip (every member's CRC). Reads only.

    check_model_files("/runs/kto-1")  # "adapter", or ModelLoadError saying what is missing or corrupt
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any, Literal

from ratingloop.models.load import ModelLoadError
from ratingloop.models.pull import DEFAULT_MODEL_NAME

# a safetensors header is JSON of at most 100 MB (the format's own limit)
_MAX_HEADER = 100_000_000


def check_model_files(path: str | Path | None) -> Literal["adapter", "folder"]:
    """The folder's kind when it can serve; ModelLoadError naming the folder and what is wrong otherwise."""
    if path is None:
        raise ModelLoadError("the version records no model folder")
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"its model folder {folder} is missing")
    if (folder / "adapter_config.json").is_file():
        config = _json(folder / "adapter_config.json")
        _check_base(folder, config.get("base_model_name_or_path"))
        _check_weights(folder, "adapter_model")
        return "adapter"
    if (folder / "config.json").is_file():
        _json(folder / "config.json")
        _check_weights(folder, "model", "pytorch_model")
        return "folder"
    raise ModelLoadError(f"{folder} holds neither adapter_config.json (an adapter) nor config.json (a model)")


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is unreadable: {e}") from e
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return value


def _check_base(folder: Path, base: Any) -> None:
    if not base:
        raise ModelLoadError(f"{folder / 'adapter_config.json'} names no base_model_name_or_path")
    base_path = Path(str(base)).expanduser()
    if base_path.is_absolute() and not (base_path / "config.json").is_file() and DEFAULT_MODEL_NAME not in str(base):
        # the default model is re-resolved in each data dir (load.py), so only other folders must exist
        raise ModelLoadError(f"the adapter {folder}'s base model {base_path} is missing (no config.json)")


def _check_weights(folder: Path, *stems: str) -> None:
    for stem in stems:
        single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
        if single.is_file():
            return _check_safetensors(single)
        if index.is_file():
            shards = sorted(set(_json(index).get("weight_map", {}).values()))
            if not shards:
                raise ModelLoadError(f"{index} lists no weight files")
            for shard in shards:
                _check_safetensors(folder / shard)
            return None
        if (folder / f"{stem}.bin").is_file():
            return _check_zip(folder / f"{stem}.bin")
    raise ModelLoadError(f"{folder} holds no weights ({' or '.join(s + '.safetensors' for s in stems)})")


def _check_safetensors(path: Path) -> None:
    """Header readable, at least one tensor, and the last tensor ends where the file ends."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8)) if size >= 8 else (-1,)
            if not 0 < n <= min(size - 8, _MAX_HEADER):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise ModelLoadError(f"the weights {path} are corrupt or truncated: {e}") from e
    tensors = [v for k, v in header.items() if k != "__metadata__"] if isinstance(header, dict) else []
    try:
        end = max(int(t["data_offsets"][1]) for t in tensors)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ModelLoadError(f"the weights {path} have no readable tensors ({type(e).__name__})") from e
    if end != size - 8 - n:
        raise ModelLoadError(f"the weights {path} are truncated or padded: tensors need {end} bytes after the "
                             f"header, the file has {size - 8 - n}")


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"the weights {path} are corrupt: {e}") from e
    if bad is not None:
        raise ModelLoadError(f"the weights {path} are corrupt: member {bad} fails its CRC check")
