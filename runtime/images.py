"""Image decoding and preprocessing for the runtime: files in, uint8 RGB at the bundle's sizes out.

- Formats: those OpenCV decodes whose size this module reads from the header: JPEG, PNG, WebP,
  TIFF/BigTIFF, BMP, GIF, JPEG 2000 (JP2 and raw codestream), AVIF, PNM/PAM, PFM, Sun raster and
  Radiance HDR. Anything else (OpenEXR, unknown bytes) is refused *before* decoding.
- EXIF orientation is honoured (OpenCV applies it unless IMREAD_UNCHANGED is used, so we never use that).
- Grey, RGBA (alpha dropped: the photo is treated as opaque) and 16-bit images become 8-bit RGB.
- Decompression bombs: the pixel count is read from the file header *before* decoding and checked
  against a cap (and again after decoding); files larger than any image under the cap could be
  are refused before they are read. A PNG chunk declaring more bytes than the file holds is refused
  before decoding (``check_png_chunks``: OpenCV would allocate what it declares).
- Folders: files are picked by content (``sniff_format``), not by suffix alone.

The model sees pixels exactly as the exported graphs expect them: uint8 RGB, NHWC; normalisation
happens inside the graphs. A street photo is stretched to image_size x 2*image_size (DESIGN §2).
"""
from __future__ import annotations

import contextlib
import os
import struct
import sys
from pathlib import Path

import cv2
import numpy as np

MAX_PIXELS = 100_000_000  # 100 MP: far above any camera, far below what would exhaust memory
# The authors' street interpolation (albumentations Resize / RandomResizedCrop with INTER_LINEAR_EXACT)
STREET_INTERPOLATION = cv2.INTER_LINEAR_EXACT
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".jp2", ".j2k", ".avif",
                  ".pbm", ".pgm", ".ppm", ".pnm", ".pam", ".pfm", ".ras", ".sr", ".hdr", ".pic")

# Colour read that applies EXIF orientation, keeps 16-bit depth, and yields RGB when OpenCV can.
_HAS_RGB_FLAG = hasattr(cv2, "IMREAD_COLOR_RGB")
_READ_FLAGS = (cv2.IMREAD_COLOR_RGB if _HAS_RGB_FLAG else cv2.IMREAD_COLOR) | cv2.IMREAD_ANYDEPTH


# Decoding failures are reported as one ImageError line; OpenCV's own error log would add more lines.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
# libpng and libjpeg print their own warnings ("libpng error: IDAT: CRC error") straight to file
# descriptor 2. The CLIs set this so that a damaged photo stays one line; it silences fd 2 around each
# decode, process-wide, so libraries embedding the runtime leave it off.
QUIET_CODECS = False


class ImageError(ValueError):
    """An image that cannot be used, with one line saying why."""


# ---- header sizes (so that a bomb is refused before any pixel is allocated) ---------------------
def sniff_format(head: bytes) -> str | None:
    """The image format named by the first bytes of a file (32 are enough), or None."""
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM":
        return "bmp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        return "jp2"
    if head[:4] == b"\xff\x4f\xff\x51":
        return "j2k"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "avif"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return "pnm"
    if head[:3] in (b"PF\n", b"Pf\n", b"PF\r", b"Pf\r"):
        return "pfm"
    if head[:4] == b"\x59\xa6\x6a\x95":
        return "sunraster"
    if head[:10] == b"#?RADIANCE" or head[:6] == b"#?RGBE":
        return "hdr"
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of any format ``sniff_format`` knows; None for other bytes.
    A header that is truncated or inconsistent raises ImageError."""
    fmt = sniff_format(data[:32])
    if fmt is None:
        return None
    try:
        w, h = _HEADER_READERS[fmt](data)
    except ImageError:
        raise
    except (struct.error, IndexError, KeyError, ValueError):
        raise ImageError(f"truncated or corrupt {fmt.upper()} header") from None
    if w < 1 or h < 1:
        raise ImageError(f"{fmt.upper()} header gives an empty size {w}x{h}")
    return int(w), int(h)


def _png_size(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise ImageError("PNG without an IHDR header")
    return struct.unpack(">II", data[16:24])


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
    e = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(e + "H", data[2:4])[0] == 43  # BigTIFF: 8-byte offsets and counts, 20-byte entries
    if big:
        ifd = struct.unpack(e + "Q", data[8:16])[0]
        count, first, size = struct.unpack(e + "Q", data[ifd:ifd + 8])[0], ifd + 8, 20
    else:
        ifd = struct.unpack(e + "I", data[4:8])[0]
        count, first, size = struct.unpack(e + "H", data[ifd:ifd + 2])[0], ifd + 2, 12
    found = {}
    for n in range(min(count, 4096)):
        at = first + size * n
        tag, typ = struct.unpack(e + "HH", data[at:at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength (SHORT, LONG or LONG8)
            fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
            if fmt is None:
                raise ImageError("TIFF with an unusual width/height type")
            value = at + (12 if big else 8)
            found[tag] = struct.unpack(e + fmt, data[value:value + struct.calcsize(fmt)])[0]
    if 256 not in found or 257 not in found:
        raise ImageError("TIFF without width/height tags")
    return found[256], found[257]


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _gif_size(data: bytes) -> tuple[int, int]:
    """The logical screen, grown to hold the first frame (what a decoder allocates for it)."""
    w, h, flags = struct.unpack("<HHB", data[6:11])
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while i < len(data):
        block = data[i]
        if block == 0x2C:  # image descriptor
            left, top, fw, fh = struct.unpack("<HHHH", data[i + 1:i + 9])
            return max(w, left + fw), max(h, top + fh)
        if block == 0x21:  # extension: label, then sub-blocks until a zero length
            i += 2
            while data[i]:
                i += data[i] + 1
            i += 1
            continue
        break
    raise ImageError("GIF without an image")


def _jp2_size(data: bytes) -> tuple[int, int]:
    """JP2 boxes: jp2h holds ihdr (height, width)."""
    i = 0
    while i + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        header = 8
        if length == 1:
            length, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        if kind == b"jp2h":
            i += header  # descend: ihdr is its first box
            continue
        if kind == b"ihdr":
            h, w = struct.unpack(">II", data[i + 8:i + 16])
            return w, h
        if length < header:
            break
        i += length
    raise ImageError("JPEG 2000 without an image header")


def _j2k_size(data: bytes) -> tuple[int, int]:
    """Raw codestream: the SIZ segment after SOC gives the reference grid and its offset."""
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
    return xsiz - xo, ysiz - yo


AVIF_MAX_DEPTH = 16


def _avif_size(data: bytes) -> tuple[int, int]:
    """ISO BMFF: the largest 'ispe' (image spatial extents) in meta/iprp/ipco."""
    sizes = []

    def walk(start: int, end: int, depth: int = 0) -> None:
        if depth > AVIF_MAX_DEPTH:  # ispe lies 3 boxes deep; a file of nested boxes must not exhaust the stack
            raise ImageError("AVIF with boxes nested too deep")
        i = start
        while i + 8 <= end:
            length, kind = struct.unpack(">I4s", data[i:i + 8])
            header = 8
            if length == 1:
                length, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
            elif length == 0:
                length = end - i
            if length < header or i + length > end:
                raise ImageError("AVIF with a broken box")
            if kind == b"meta":
                walk(i + header + 4, i + length, depth + 1)  # a full box: version and flags first
            elif kind in (b"iprp", b"ipco"):
                walk(i + header, i + length, depth + 1)
            elif kind == b"ispe":
                sizes.append(struct.unpack(">II", data[i + header + 4:i + header + 12]))
            i += length

    walk(0, len(data))
    if not sizes:
        raise ImageError("AVIF without image extents")
    return max(w for w, _ in sizes), max(h for _, h in sizes)


def _pnm_tokens(data: bytes, count: int, start: int) -> list[int]:
    """The first ``count`` integers of a PNM header, skipping whitespace and # comments."""
    tokens, i = [], start
    while len(tokens) < count:
        while data[i:i + 1].isspace():
            i += 1
        if data[i:i + 1] == b"#":
            while i < len(data) and data[i:i + 1] not in (b"\n", b"\r"):  # a comment to the end of the data
                i += 1
            continue
        j = i
        while data[j:j + 1].isdigit():
            j += 1
        if j == i or j - i > 10:
            raise ValueError("not a PNM number")
        tokens.append(int(data[i:j]))
        i = j
    return tokens


def _pnm_size(data: bytes) -> tuple[int, int]:
    if data[1:2] == b"7":  # PAM: WIDTH and HEIGHT lines before ENDHDR
        head = data[:4096].split(b"ENDHDR")[0]
        fields = dict(line.split(None, 1) for line in head.splitlines()[1:] if len(line.split(None, 1)) == 2)
        return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    return tuple(_pnm_tokens(data, 2, 2))


def _pfm_size(data: bytes) -> tuple[int, int]:
    head = data[3:128]
    w, h = head.split(None, 2)[:2]
    # OpenCV reads one whitespace byte before each field: with more it reads a height of 0, fails an assertion,
    # and OpenCV 4.6 (the C++ runtime's) leaves the file's bytes behind in its temp folder
    if head[:len(w)] != w or head[len(w) + 1:len(w) + 1 + len(h)] != h:
        raise ImageError("PFM header with more than one whitespace byte before a size field")
    return int(w), int(h)


def _sunraster_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[4:12])


def _hdr_size(data: bytes) -> tuple[int, int]:
    """Radiance: header lines, a blank line, then the resolution line such as '-Y 480 +X 640'."""
    head, sep, rest = data[:65536].partition(b"\n\n")
    if not sep:
        raise ValueError("no end of header")
    parts = rest.split(b"\n", 1)[0].split()
    if len(parts) != 4 or parts[0][1:] not in (b"X", b"Y") or parts[2][1:] not in (b"X", b"Y"):
        raise ValueError("bad resolution line")
    a, b = int(parts[1]), int(parts[3])
    return (b, a) if parts[0][1:] == b"Y" else (a, b)


_HEADER_READERS = {"png": _png_size, "jpeg": _jpeg_size, "webp": _webp_size, "tiff": _tiff_size, "bmp": _bmp_size,
                   "gif": _gif_size, "jp2": _jp2_size, "j2k": _j2k_size, "avif": _avif_size, "pnm": _pnm_size,
                   "pfm": _pfm_size, "sunraster": _sunraster_size, "hdr": _hdr_size}


# ---- decoding ----------------------------------------------------------------------------------
def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> uint8 RGB [H, W, 3], EXIF-rotated; ImageError on anything unusable."""
    if not data:
        raise ImageError("empty file")
    size = header_size(data)
    if size is None:  # its size cannot be read before decoding: refuse rather than risk a bomb
        raise ImageError("not a readable image (unknown format or corrupt data)")
    if size[0] * size[1] > max_pixels:
        raise ImageError(f"{size[0]}x{size[1]} pixels is over the cap of {max_pixels} (decompression bomb?)")
    if sniff_format(data[:32]) == "png":
        check_png_chunks(data)
    with _codecs_quiet() if QUIET_CODECS else contextlib.nullcontext():
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), _READ_FLAGS)
        except cv2.error:  # OpenCV asserts on some damaged headers (a PFM whose height it reads as 0)
            img = None
    if img is None:
        raise ImageError("not a readable image (unknown format or corrupt data)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(f"{img.shape[1]}x{img.shape[0]} pixels is over the cap of {max_pixels}")
    return to_rgb8(img, already_rgb=_HAS_RGB_FLAG)


def check_png_chunks(data: bytes) -> None:
    """Refuses a PNG chunk whose declared length runs past the end of the data. OpenCV's PNG reader
    allocates what a chunk declares before reading it: a 186-byte file declaring a 2 GB chunk took
    2-4 GB of memory (found by tests/test_fuzz.py). A file cut short is refused here too."""
    i = 8
    while i + 8 <= len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        if length > len(data) - i - 12:
            raise ImageError(f"PNG chunk of {length} bytes at byte {i} runs past the end of the data "
                             "(truncated or corrupt file)")
        if data[i + 4:i + 8] == b"IEND":
            return
        i += 12 + length


@contextlib.contextmanager
def _codecs_quiet():
    """File descriptor 2 pointed at /dev/null while a C codec runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def to_rgb8(img: np.ndarray, already_rgb: bool = True) -> np.ndarray:
    """Grey / colour / 4-channel, 8/16-bit or float -> uint8 RGB [H, W, 3]."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 -> 255, rounded
    elif img.dtype != np.uint8:  # float (PFM, HDR): a damaged file may hold NaN or Inf
        f = np.nan_to_num(np.asarray(img, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        np.maximum(f, 0.0, out=f)  # black either way; a huge negative value would overflow the scaling below
        img = np.rint(np.clip(f * (255.0 if f.max(initial=0) <= 1.0 else 1.0), 0, 255)).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img if already_rgb else img[..., ::-1])


def max_file_bytes(max_pixels: int) -> int:
    """The largest file worth reading: uncompressed 16-bit RGBA at the pixel cap, plus headers."""
    return 8 * max_pixels + (1 << 20)


def read_image(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A file -> uint8 RGB [H, W, 3]; every problem is one ImageError line naming the file."""
    path = Path(path)
    try:
        nbytes = path.stat().st_size
        if nbytes > max_file_bytes(max_pixels):
            raise ImageError(f"{path}: {nbytes / 1e6:.0f} MB is larger than any image under the cap of {max_pixels} "
                             "pixels could be")
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
    """Files directly inside ``folder`` that are images by content, or that claim to be by their suffix
    (so that a damaged photo is reported, not skipped), sorted by name."""
    found = []
    for p in Path(folder).iterdir():
        if not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            found.append(p)
            continue
        try:
            with open(p, "rb") as f:
                head = f.read(32)
        except OSError:
            continue
        if sniff_format(head):
            found.append(p)
    return sorted(found)
