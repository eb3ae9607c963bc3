"""Decode folders of image files once into a cached uint8 N×C×H×W array.

The first load decodes every file with PIL in a thread pool (PIL releases the GIL while decoding), converts it
to RGB (or grayscale), resizes the shorter side to the target size and centre-crops a square, and writes the
result under the cache directory as ``images.npy`` + ``meta.json``. Later loads memory-map ``images.npy``, so
large sets stream from disk instead of being read into memory. The cache entry is keyed by a hash of the
dataset name, the resolved folder, the requested size and the sorted file list with sizes and modification
times: adding, removing or editing a file starts a new entry, which replaces (deletes) the folder's old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
import struct
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from deepclust.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# PIL modes that carry no colour; a folder made only of these keeps a single channel.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Bump when the decoding changes, so old cache entries are not reused.
CACHE_VERSION = 2
# The largest side chosen automatically (the median shorter side otherwise): photos would decode at full size,
# megabytes per image in the cache and millions of pixel features; data.image_size sets any size explicitly.
AUTO_SIZE_LIMIT = 128
# Above this many files the decoding shows a progress bar.
PROGRESS_THRESHOLD = 1000
# Files decoded per batch of thread-pool work, which bounds the memory held by pending results.
_CHUNK = 512
# How many skipped files a warning names before summarising the rest.
_LIST_SKIPPED = 20
# What PIL raises on a truncated, corrupt or unsupported file.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


@dataclass
class DecodedImages:
    """The cached result of decoding a list of files."""

    images: np.ndarray  # uint8 N×C×H×W, memory-mapped from the cache
    ids: list[str]  # paths of the decoded files relative to the dataset folder, in row order
    skipped: list[str]  # files that could not be read, relative to the dataset folder


def default_cache_dir() -> Path:
    """``$DEEPCLUST_CACHE`` when set, else ``~/.cache/deepclust``."""
    env = os.environ.get("DEEPCLUST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deepclust"


def is_image_file(path: Path) -> bool:
    """True for a file name with an image extension (case-insensitive) that is not hidden."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def find_images(directory: Path) -> list[Path]:
    """All image files under ``directory``, recursively and sorted; hidden files and folders are skipped.

    Linked folders are followed (as torchvision's ``ImageFolder`` does), each real folder once, so a link cycle
    ends; a dangling link is listed, then reported as unreadable."""
    found: list[Path] = []
    seen: set[str] = set()
    for current, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(current) / f for f in files if is_image_file(Path(f)))
    return sorted(found)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float grayscale images to 8-bit "L" by scaling, not clipping."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    return image


def _flatten(image: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to RGB (``channels=3``) or L (``channels=1``); transparency goes on white."""
    image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB" if channels == 3 else "L")


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode ``path`` as a uint8 C×size×size array: shorter side resized to ``size``, then centre-cropped."""
    with Image.open(path) as image:
        # JPEG only: let the decoder downscale by a power of two while keeping both sides >= size.
        image.draft(None, (size, size))
        # the camera's orientation tag, so that a photo taken upright is cropped upright
        flat = _flatten(ImageOps.exif_transpose(image), channels)
    if flat.size != (size, size):
        flat = ImageOps.fit(flat, (size, size), method=Image.Resampling.BICUBIC)
    array = np.asarray(flat, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _probe(path: Path) -> tuple[int, int, str]:
    """(width, height, mode) from the file header, without decoding the pixels."""
    with Image.open(path) as image:
        return image.width, image.height, image.mode


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base``, with forward slashes (the id of an image)."""
    return path.relative_to(base).as_posix()


def _warn_skipped(base: Path, skipped: Sequence[str]) -> None:
    """One warning listing the files that could not be read (the CLI shows warnings; a log line as well would
    print it twice)."""
    if not skipped:
        return
    shown = ", ".join(skipped[:_LIST_SKIPPED])
    more = f" and {len(skipped) - _LIST_SKIPPED} more" if len(skipped) > _LIST_SKIPPED else ""
    message = f"skipped {len(skipped)} unreadable image file(s) under {base}: {shown}{more}"
    warnings.warn(message, UserWarning, stacklevel=2)


def _run_parallel(
    work: Callable[[int], Any], count: int, description: str, workers: int | None = None
) -> list[Any]:
    """``[work(i) for i in range(count)]`` on a thread pool, with a progress bar for large counts."""
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    results: list[Any] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if count <= PROGRESS_THRESHOLD:
            return list(pool.map(work, range(count)))
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True)) as progress:
            task = progress.add_task(description, total=count)
            for start in range(0, count, _CHUNK):
                chunk = list(pool.map(work, range(start, min(start + _CHUNK, count))))
                results.extend(chunk)
                progress.advance(task, len(chunk))
    return results


def _cache_key(
    name: str, base: Path, files: Sequence[Path], image_size: int | None, channels: int | None
) -> str:
    """Hash of everything that determines the decoded array."""
    digest = hashlib.sha256()
    header = {"version": CACHE_VERSION, "name": name, "base": str(base), "size": image_size, "ch": channels}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in files:
        try:
            stat = path.stat()
        except OSError:  # a dangling link: decoding reports it as unreadable
            digest.update(f"\n{_rel(path, base)}\tmissing".encode())
            continue
        digest.update(f"\n{_rel(path, base)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    """Write JSON to a temporary file and rename it, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)


def _read_cache(entry: Path) -> DecodedImages | None:
    """The cache entry's contents, or None when it is missing or incomplete."""
    meta_path, images_path = entry / "meta.json", entry / "images.npy"
    if not (meta_path.is_file() and images_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable cache entry %s: %s", entry, err)
        return None
    if images.ndim != 4 or images.shape[0] != len(meta["ids"]):
        return None
    return DecodedImages(images=images, ids=list(meta["ids"]), skipped=list(meta["skipped"]))


def _choose_geometry(
    base: Path, files: Sequence[Path], image_size: int | None, channels: int | None
) -> tuple[int, int, list[Path], list[str]]:
    """(size, channels, readable files, skipped) when the size or channel count depends on the images.

    Size rule: ``image_size`` when given, else the median of the images' shorter sides, at most
    :data:`AUTO_SIZE_LIMIT`.
    Channel rule: one channel when every image is grayscale, else three.
    """
    if image_size is not None and channels is not None:
        return image_size, channels, list(files), []

    def probe(i: int) -> tuple[int, int, str] | str:
        """Header of file ``i``, or the reason it cannot be read."""
        try:
            return _probe(files[i])
        except _DECODE_ERRORS as err:
            return f"{_rel(files[i], base)} ({err})"

    probes = _run_parallel(probe, len(files), "reading image headers")
    readable = [f for f, p in zip(files, probes, strict=True) if not isinstance(p, str)]
    skipped = [p for p in probes if isinstance(p, str)]
    headers = [p for p in probes if not isinstance(p, str)]
    if not headers:
        return 0, 0, [], skipped
    size = (
        image_size
        if image_size is not None
        else min(AUTO_SIZE_LIMIT, round(statistics.median(min(w, h) for w, h, _ in headers)))
    )
    if channels is None:
        channels = 1 if all(mode in GRAYSCALE_MODES for _, _, mode in headers) else 3
    return size, channels, readable, skipped


def _decode_into_cache(
    base: Path, files: Sequence[Path], size: int, channels: int, entry: Path, skipped: list[str]
) -> DecodedImages:
    """Decode ``files`` into ``entry/images.npy`` (written to a temporary file, then renamed)."""
    entry.mkdir(parents=True, exist_ok=True)
    tmp = entry / f".images.{uuid.uuid4().hex}.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), channels, size, size))

    def decode(i: int) -> str | None:
        """Decode file ``i`` into row ``i``; the reason on failure, else None."""
        try:
            out[i] = decode_image(files[i], size, channels)
        except _DECODE_ERRORS as err:
            return f"{_rel(files[i], base)} ({err})"
        return None

    errors = _run_parallel(decode, len(files), f"decoding {len(files):,} images")
    good = [i for i, err in enumerate(errors) if err is None]
    skipped = skipped + [err for err in errors if err is not None]
    if len(good) < len(files):
        # Drop the rows of failed files by copying the good ones into a new, smaller array.
        compact_tmp = entry / f".images.{uuid.uuid4().hex}.tmp"
        compact = np.lib.format.open_memmap(
            compact_tmp, mode="w+", dtype=np.uint8, shape=(len(good), channels, size, size)
        )
        for start in range(0, len(good), _CHUNK):
            rows = good[start : start + _CHUNK]
            compact[start : start + len(rows)] = out[rows]
        compact.flush()
        del out, compact
        tmp.unlink()
        tmp = compact_tmp
    else:
        out.flush()
        del out
    os.replace(tmp, entry / "images.npy")
    ids = [_rel(files[i], base) for i in good]
    _write_json_atomic(
        entry / "meta.json",
        {"ids": ids, "skipped": skipped, "size": size, "channels": channels, "base": str(base)},
    )
    return DecodedImages(images=np.load(entry / "images.npy", mmap_mode="r"), ids=ids, skipped=skipped)


def _remove_stale_entries(current: Path, base: Path) -> None:
    """Delete the cache entries of the same folder, name and size that ``current`` replaces (the folder's files
    changed since): each is a full copy of the images."""
    for entry in current.parent.glob(current.name.rsplit("-", 1)[0] + "-*"):
        if entry == current:
            continue
        try:
            stale = json.loads((entry / "meta.json").read_text()).get("base") == str(base)
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


def load_image_files(
    name: str,
    base: Path,
    files: Sequence[Path],
    *,
    image_size: int | None,
    channels: int | None,
    cache_dir: str | Path | None = None,
) -> DecodedImages:
    """Decode ``files`` (all under ``base``) into a cached uint8 N×C×S×S array, or reuse the cache.

    ``image_size`` is the square output side S; None takes the median of the images' shorter sides.
    ``channels`` is 1 or 3; None keeps one channel only when every image is grayscale. Unreadable files are
    skipped with one warning listing them. Raises :class:`UserError` when no file can be read or the cache
    directory cannot be written.
    """
    # abspath, not resolve: symlinked files (a subset linked from a full ImageNet) must stay under ``base``.
    base = Path(os.path.abspath(base))
    files = sorted(Path(os.path.abspath(f)) for f in files)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = _cache_key(name, base, files, image_size, channels)
    entry = root / "images" / f"{name}-{image_size or 'auto'}-{key}"
    decoded = _read_cache(entry)
    if decoded is not None:
        logger.info("%s: using cached images from %s", name, entry)
    else:
        size, channels, readable, skipped = _choose_geometry(base, files, image_size, channels)
        if not readable:
            raise UserError(f"none of the {len(files)} image file(s) under {base} could be read")
        try:
            decoded = _decode_into_cache(base, readable, size, channels, entry, skipped)
        except OSError as err:
            raise UserError(
                f"cannot write the image cache under {root} ({err}); set $DEEPCLUST_CACHE to a writable one"
            ) from err
        _remove_stale_entries(entry, base)
    if not decoded.ids:
        raise UserError(f"none of the {len(files)} image file(s) under {base} could be read")
    _warn_skipped(base, decoded.skipped)
    return decoded
