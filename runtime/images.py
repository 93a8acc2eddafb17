"""Image decoding and preprocessing for the runtime: files in, uint8 RGB at the bundle's sizes out.

- Formats: whatever OpenCV decodes (JPEG, PNG, WebP, TIFF, BMP, ...).
- EXIF orientation is honoured (OpenCV applies it unless IMREAD_UNCHANGED is used, so we never use that).
- Grey, RGBA (alpha dropped: the photo is treated as opaque) and 16-bit images become 8-bit RGB.
- Decompression bombs: the pixel count is read from the file header *before* decoding and checked
  against a cap, then checked again after decoding (for formats whose header we do not parse).

The model sees pixels exactly as the exported graphs expect them: uint8 RGB, NHWC; normalisation
happens inside the graphs. A street photo is stretched to image_size x 2*image_size (DESIGN §2).
"""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

MAX_PIXELS = 100_000_000  # 100 MP: far above any camera, far below what would exhaust memory
# The authors' street interpolation (albumentations Resize / RandomResizedCrop with INTER_LINEAR_EXACT)
STREET_INTERPOLATION = cv2.INTER_LINEAR_EXACT
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")

# Colour read that applies EXIF orientation, keeps 16-bit depth, and yields RGB when OpenCV can.
_HAS_RGB_FLAG = hasattr(cv2, "IMREAD_COLOR_RGB")
_READ_FLAGS = (cv2.IMREAD_COLOR_RGB if _HAS_RGB_FLAG else cv2.IMREAD_COLOR) | cv2.IMREAD_ANYDEPTH


class ImageError(ValueError):
    """An image that cannot be used, with one line saying why."""


# ---- header sizes (so that a bomb is refused before any pixel is allocated) ---------------------
def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG/JPEG/WebP/TIFF/BMP header, or None when the format is not parsed here."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
    except (struct.error, IndexError):
        raise ImageError("truncated or corrupt image header") from None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    raise ImageError("JPEG without a frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    raise ImageError("WebP without a known image chunk")


def _tiff_size(data: bytes) -> tuple[int, int]:
    endian = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(endian + "I", data[4:8])[0]
    count = struct.unpack(endian + "H", data[ifd:ifd + 2])[0]
    found = {}
    for n in range(count):
        e = ifd + 2 + 12 * n
        tag, typ = struct.unpack(endian + "HH", data[e:e + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength (SHORT or LONG)
            fmt = "H" if typ == 3 else "I"
            found[tag] = struct.unpack(endian + fmt, data[e + 8:e + 8 + struct.calcsize(fmt)])[0]
    if 256 not in found or 257 not in found:
        raise ImageError("TIFF without width/height tags")
    return found[256], found[257]


# ---- decoding ----------------------------------------------------------------------------------
def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> uint8 RGB [H, W, 3], EXIF-rotated; ImageError on anything unusable."""
    if not data:
        raise ImageError("empty file")
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(f"{size[0]}x{size[1]} pixels is over the cap of {max_pixels} (decompression bomb?)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), _READ_FLAGS)
    if img is None:
        raise ImageError("not a readable image (unknown format or corrupt data)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(f"{img.shape[1]}x{img.shape[0]} pixels is over the cap of {max_pixels}")
    return to_rgb8(img, already_rgb=_HAS_RGB_FLAG)


def to_rgb8(img: np.ndarray, already_rgb: bool = True) -> np.ndarray:
    """Grey / colour / 4-channel, 8/16-bit or float -> uint8 RGB [H, W, 3]."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 -> 255, rounded
    elif img.dtype != np.uint8:
        img = np.clip(np.asarray(img, np.float32) * (255.0 if img.max(initial=0) <= 1.0 else 1.0), 0, 255)
        img = np.rint(img).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img if already_rgb else img[..., ::-1])


def read_image(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A file -> uint8 RGB [H, W, 3]; every problem is one ImageError line naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return decode_image(data, max_pixels)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None


def load_rgb(image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A path, encoded bytes, or an RGB array -> uint8 RGB [H, W, 3]."""
    if isinstance(image, (str, Path)):
        return read_image(image, max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), max_pixels)
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or arr.size == 0:
        raise ImageError(f"an image array must be [H, W], [H, W, 3] or [H, W, 4], got {arr.shape}")
    return to_rgb8(arr, already_rgb=True)


# ---- model inputs --------------------------------------------------------------------------------
def street_input(rgb: np.ndarray, image_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """A street photo stretched to image_size x 2*image_size (the graph splits it into two halves).

    The one street resize of jzi (DESIGN §2): OpenCV's ``INTER_LINEAR_EXACT``, the interpolation of
    the authors' albumentations ``Resize`` / ``RandomResizedCrop``. It is bit-exact across OpenCV
    versions by design, and training, evaluation, the reference pipeline and both runtimes call it,
    so every side sees the pixels the model was trained on.
    """
    img = cv2.resize(rgb, (2 * image_size, image_size), interpolation=STREET_INTERPOLATION)
    if out is None:
        return img
    out[...] = img
    return out


def list_images(folder) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
