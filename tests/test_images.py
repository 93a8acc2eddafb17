"""Image decoding: formats, EXIF orientation, grey/RGBA/16-bit, the pixel cap, clear errors."""
import struct

import cv2
import numpy as np
import pytest

from jzi.runtime.images import ImageError, decode_image, header_size, load_rgb, read_image, street_input


def _encode(ext: str, img: np.ndarray, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def _two_colour_rgb(h=20, w=40) -> np.ndarray:
    """Left half red, right half blue (RGB)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (255, 0, 0)
    img[:, w // 2:] = (0, 0, 255)
    return img


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 EXIF segment holding only the Orientation tag right after SOI."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tiff", ".bmp"])
def test_formats_decode_to_rgb_and_headers_give_the_size(ext):
    rgb = _two_colour_rgb(24, 40)
    data = _encode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert header_size(data) == (40, 24)
    out = decode_image(data)
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    # red on the left, blue on the right, in RGB order (lossy formats: only roughly)
    assert out[12, 5, 0] > 200 and out[12, 5, 2] < 60
    assert out[12, 35, 2] > 200 and out[12, 35, 0] < 60


def test_exif_orientation_is_honoured():
    rgb = _two_colour_rgb(20, 40)
    jpeg = _encode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    plain = decode_image(jpeg)
    assert plain.shape == (20, 40, 3)
    rotated = decode_image(_with_exif_orientation(jpeg, 6))  # 6: rotate 90 degrees clockwise to display
    assert rotated.shape == (40, 20, 3)
    # after a clockwise turn the left (red) half is on top
    assert rotated[5, 10, 0] > 200 and rotated[35, 10, 2] > 200


def test_grey_rgba_and_16bit_become_8bit_rgb():
    grey = (np.arange(100, dtype=np.uint8).reshape(10, 10) * 2)
    out = decode_image(_encode(".png", grey))
    assert out.shape == (10, 10, 3) and (out[..., 0] == grey).all() and (out[..., 2] == grey).all()

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 2] = 200  # BGRA: red channel
    rgba[..., 3] = 30  # mostly transparent: alpha is dropped, the colour kept
    out = decode_image(_encode(".png", rgba))
    assert out.shape == (10, 10, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()

    deep = np.full((10, 10, 3), 65535, np.uint16)
    deep[:5] = 257 * 100
    out = decode_image(_encode(".png", deep))
    assert out.dtype == np.uint8 and (out[:5] == 100).all() and (out[5:] == 255).all()
    deep_grey = np.full((8, 8), 257 * 7, np.uint16)
    assert (decode_image(_encode(".tiff", deep_grey)) == 7).all()


def test_pixel_cap_refuses_before_decoding():
    png = bytearray(_encode(".png", np.zeros((4, 4), np.uint8)))
    png[16:24] = struct.pack(">II", 100_000, 100_000)  # a header claiming 10 gigapixels
    with pytest.raises(ImageError, match="over the cap"):
        decode_image(bytes(png))
    small = _encode(".jpg", np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(ImageError, match="over the cap"):
        decode_image(small, max_pixels=2000)
    assert decode_image(small, max_pixels=2500).shape == (50, 50, 3)


def test_unreadable_files_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image at all")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(_encode(".jpg", np.zeros((40, 40, 3), np.uint8))[:10])
    for path, why in [(bad, "not a readable image"), (empty, "empty file"), (tmp_path / "none.jpg", "cannot read"),
                      (tmp_path, "directory"), (truncated, "JPEG|readable")]:
        with pytest.raises(ImageError, match=why) as err:
            read_image(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_arrays_and_street_input():
    arr = np.random.default_rng(0).integers(0, 256, (30, 90, 4), dtype=np.uint8)
    rgb = load_rgb(arr)
    assert rgb.shape == (30, 90, 3) and (rgb == arr[..., :3]).all()
    street = street_input(rgb, 16)
    assert street.shape == (16, 32, 3) and street.dtype == np.uint8
    out = np.zeros((16, 32, 3), np.uint8)
    assert street_input(rgb, 16, out=out) is out and (out == street).all()
    with pytest.raises(ImageError):
        load_rgb(np.zeros((5, 5, 2), np.uint8))


@pytest.mark.parametrize("ext", [".gif", ".jp2", ".avif", ".ppm", ".pgm", ".pam", ".pfm", ".ras", ".hdr"])
def test_every_other_decodable_format_gives_its_size_from_the_header(ext):
    rgb = _two_colour_rgb(48, 80)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    src = bgr.astype(np.float32) / 255 if ext in (".pfm", ".hdr") else bgr[..., 0] if ext == ".pgm" else bgr
    data = _encode(ext, src)
    assert header_size(data) == (80, 48)
    assert decode_image(data).shape == (48, 80, 3)


def _never_decode(monkeypatch):
    import jzi.runtime.images as images

    def boom(*a, **k):
        raise AssertionError("decoded although the header said it is too big")
    monkeypatch.setattr(images.cv2, "imdecode", boom)


def _gif_claiming(w, h) -> bytes:
    """A tiny GIF whose logical screen and frame claim w x h (the issue's 296 KB 20000x20000 bomb, in 40 bytes)."""
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
            + b"\x02\x02\x44\x01\x00\x3b")


def test_bombs_in_every_format_are_refused_before_decoding(monkeypatch):
    jp2 = bytearray(_encode(".jp2", np.zeros((48, 80, 3), np.uint8)))
    at = bytes(jp2).index(b"ihdr")
    jp2[at + 4:at + 12] = struct.pack(">II", 30000, 30000)
    j2k = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + struct.pack(">IIII", 40000, 40000, 0, 0) + b"\x00" * 40
    ppm = b"P6\n# a comment\n30000 30000\n255\n" + b"\x00" * 30
    hdr = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 30000 +X 30000\n" + b"\x00" * 30
    tiff = bytearray(_encode(".tiff", np.zeros((4, 4, 3), np.uint8)))
    _never_decode(monkeypatch)
    assert header_size(_gif_claiming(20000, 20000)) == (20000, 20000)
    assert header_size(j2k) == (40000, 40000) and header_size(ppm) == (30000, 30000)
    assert header_size(hdr) == (30000, 30000)
    for data in (_gif_claiming(20000, 20000), bytes(jp2), j2k, ppm, hdr):
        with pytest.raises(ImageError, match="over the cap"):
            decode_image(data)
    # a GIF whose first frame lies outside a small logical screen: the frame decides
    small_screen = bytearray(_gif_claiming(20000, 20000))
    small_screen[6:10] = struct.pack("<HH", 10, 10)
    assert header_size(bytes(small_screen)) == (20000, 20000)
    # formats whose size cannot be read first are refused, not decoded
    for data in (b"\x76\x2f\x31\x01" + b"\x00" * 100, b"random bytes here", bytes(tiff[:8])):
        with pytest.raises(ImageError, match="not a readable image|truncated or corrupt"):
            decode_image(data)


def png_with_a_lying_chunk() -> tuple[bytes, bytes, int]:
    """(a small PNG, the same with its IDAT chunk declaring 0x7FFFFFF0 bytes, where that length field lies)."""
    png = _encode(".png", np.full((48, 80, 3), 7, np.uint8))
    idat = png.index(b"IDAT") - 4
    return png, png[:idat] + struct.pack(">I", 0x7FFFFFF0) + png[idat + 4:], idat


def test_png_chunks_running_past_the_end_are_refused_before_decoding(monkeypatch):
    """OpenCV's PNG reader allocates what a chunk declares: a file this small once took 2-4 GB (found by the fuzzer)."""
    png, lying, idat = png_with_a_lying_chunk()
    _never_decode(monkeypatch)
    assert header_size(lying) == (80, 48)  # the header itself is sound
    with pytest.raises(ImageError, match=f"PNG chunk of 2147483632 bytes at byte {idat} runs past the end of the data"):
        decode_image(lying)
    with pytest.raises(ImageError, match="runs past the end of the data"):
        decode_image(png[:idat + 20])  # a file cut inside its image data
    monkeypatch.undo()
    assert decode_image(png + b"trailing bytes after IEND").shape == (48, 80, 3)


def test_pfm_headers_opencv_would_misread_are_refused_before_decoding(monkeypatch):
    body = np.ones(8 * 48 * 3, "<f4").tobytes()
    for head in (b"PF\n8\n48\n-1\n", b"PF\n8\t48\n-1\n"):  # one whitespace byte before each field: read as OpenCV does
        assert decode_image(head + body).shape == (48, 8, 3)
    _never_decode(monkeypatch)
    for head in (b"PF\n8\r 48\n-1\n", b"PF\n8  48\n-1\n", b"PF\n 8 48\n-1\n"):  # OpenCV read a height of 0 and asserted
        with pytest.raises(ImageError, match="PFM header with more than one whitespace byte before a size field"):
            decode_image(head + body)


def test_an_opencv_assertion_while_decoding_is_one_line(monkeypatch):
    import jzi.runtime.images as images

    def asserts(*a, **k):  # as OpenCV 5.0 did on the PFM headers above: "(-215:Assertion failed) size.height > 0"
        raise cv2.error("OpenCV(5.0.0) loadsave.cpp:76: error: (-215:Assertion failed) size.height > 0")
    monkeypatch.setattr(images.cv2, "imdecode", asserts)
    with pytest.raises(ImageError, match="^not a readable image"):
        decode_image(_encode(".png", np.zeros((8, 8, 3), np.uint8)))


def test_big_files_are_refused_before_they_are_read(tmp_path):
    big = tmp_path / "huge.jpg"
    with open(big, "wb") as f:
        f.truncate(8 * 1000 + (1 << 20) + 1)  # sparse: no disk used
    with pytest.raises(ImageError, match="larger than any image"):
        read_image(big, max_pixels=1000)


def test_folders_are_picked_by_content(tmp_path, monkeypatch):
    from jzi.runtime.images import list_images

    (tmp_path / "holiday.jpg").write_bytes(_gif_claiming(30000, 30000))  # a GIF bomb named .jpg
    (tmp_path / "IMG_0001").write_bytes(_encode(".jpg", np.zeros((8, 8, 3), np.uint8)))  # no suffix, a JPEG
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "broken.png").write_bytes(b"garbage")  # claims to be an image: listed, so it is reported
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["IMG_0001", "broken.png", "holiday.jpg"]
    _never_decode(monkeypatch)
    with pytest.raises(ImageError, match="holiday.jpg: 30000x30000 pixels is over the cap"):
        read_image(tmp_path / "holiday.jpg")


def test_headers_missing_their_size_fields_are_one_line():
    """Found by the fuzzer (tests/test_fuzz.py): a PAM header without HEIGHT raised KeyError."""
    for data in (b"P7\nWIDTH 80\n\xee6", b"P7\nHEIGHT 8\nENDHDR\n", b"#?RADIANCE\n\n-Y 8\n", b"PF\n8\n"):
        with pytest.raises(ImageError, match="truncated or corrupt"):
            header_size(data)


def nested_avif_boxes(depth: int) -> bytes:
    """An AVIF 'ftyp' followed by ``depth`` meta boxes, each inside the last."""
    box = b""
    for _ in range(depth):
        body = b"\0\0\0\0" + box  # version and flags, then the inner box
        box = struct.pack(">I", 8 + len(body)) + b"meta" + body
    return struct.pack(">I", 16) + b"ftypavif\0\0\0\0" + box


def test_headers_that_never_end_are_refused_in_bounded_time():
    """A PNM comment running to the end of the data looped forever; AVIF boxes nested 2000 deep raised
    RecursionError. Both are one ImageError line now."""
    with pytest.raises(ImageError, match="truncated or corrupt PNM header"):
        header_size(b"P6\n# a comment without its line end")
    with pytest.raises(ImageError, match="AVIF with boxes nested too deep"):
        header_size(nested_avif_boxes(2000))


def test_codec_warnings_stay_off_stderr_when_asked(tmp_path):
    """A PNG with a CRC error: libpng prints to fd 2 itself; with QUIET_CODECS (set by jzi-run) nothing shows."""
    import subprocess
    import sys

    png = bytearray(_encode(".png", np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    at = bytes(png).index(b"IDAT") + 20
    png[at] ^= 0xFF
    bad = tmp_path / "crc.png"
    bad.write_bytes(bytes(png))
    code = ("import sys; from jzi.runtime import images as I; I.QUIET_CODECS = sys.argv[2] == '1'\n"
            "try:\n    I.read_image(sys.argv[1])\nexcept I.ImageError as e:\n    print(e)")
    loud = subprocess.run([sys.executable, "-c", code, str(bad), "0"], capture_output=True, text=True)
    quiet = subprocess.run([sys.executable, "-c", code, str(bad), "1"], capture_output=True, text=True)
    assert "libpng" in loud.stderr  # the fault this guards against
    assert quiet.stderr == "" and "not a readable image" in quiet.stdout


def test_float_images_with_nan_or_inf_become_valid_pixels():
    from jzi.runtime.images import to_rgb8

    img = np.array([[[np.nan, np.inf, -np.inf], [0.5, 2.0, 1e38]]], np.float32)
    with np.errstate(all="raise"):
        out = to_rgb8(img)
        # a 0-1 image with a huge negative value (the fuzz test found one): black there, not an overflow
        assert to_rgb8(np.array([[-3e38, 0.5, 1.0]], np.float32))[..., 0].tolist() == [[0, 128, 255]]
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
