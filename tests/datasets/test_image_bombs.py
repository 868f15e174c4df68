"""Decompression bombs: small files that decode to huge ones must be refused with an ImageError before
the memory is spent, through every entry point that decodes an upload (``read_image``, which the
Compare page and the REST service use; the out-of-distribution guard's second look at the raw bytes).

Every bomb is built here (pydicom, zlib, PIL); nothing is read from disk but what a test writes. The
memory bound is measured in a fresh subprocess from the kernel's peak resident size (``VmHWM``, reset
through ``/proc/self/clear_refs`` after imports and a warm-up read; ``ru_maxrss`` where there is no
/proc) — the zlib / libjpeg buffers are C allocations that ``tracemalloc`` does not see: peak RSS growth
during the read must stay under :data:`BOUND_MB`. It is a memory bound, never a
wall-clock one. The builders are also used by ``bench/image_bombs.py``.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrcore.data.imageio import HEADER_ALLOWANCE, MAX_PIXELS, open_image, read_image
from cxrcore.errors import ImageError
from cxrcore.explain.ood import check_image, saturation_from_bytes

REPO = Path(__file__).resolve().parents[2]
BOUND_MB = 150  # peak RSS growth allowed while one bomb is read (the old reader: 400 MB to 800 MB and more)
SOP_DX = "1.2.840.10008.5.1.4.1.1.1.1"


# ------------------------------------------------------------------ builders (also used by bench/image_bombs.py)
def image_dataset(rows: int, cols: int, bits: int = 8, **elements):
    """A DX image dataset without pixel data (the caller adds it)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = SOP_DX
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def _explicit_le(ds) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _file_meta(ds, transfer_syntax) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta)
    return b"\0" * 128 + b"DICM" + fp.getvalue()


def deflated_dicom(rows: int, cols: int, zero_bytes: int, tag: int = 0x7FE00010, **elements) -> bytes:
    """A Deflated Explicit VR Little Endian file declaring ``rows`` x ``cols`` (8-bit) whose element ``tag``
    (Pixel Data unless told) holds ``zero_bytes`` zero bytes. The zeros are streamed through zlib, never
    held: 400 MB compress to about 400 KB. Another ``tag`` (e.g. a private one before group 0028) gets the
    zeros and the image a real, declared-size pixel data element."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = image_dataset(rows, cols, **elements)
    if tag != 0x7FE00010:
        ds.PixelData = bytes(rows * cols)
    before = ds.__class__({t: e for t, e in ds.items() if t < tag})
    after = ds.__class__({t: e for t, e in ds.items() if t > tag})
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    header = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"OB", 0, zero_bytes)
    parts = [comp.compress(_explicit_le(before) + header)]
    chunk = bytes(1 << 22)
    left = zero_bytes
    while left:
        parts.append(comp.compress(chunk[:min(left, len(chunk))]))
        left -= min(left, len(chunk))
    parts.append(comp.compress(_explicit_le(after)) + comp.flush())
    return _file_meta(ds, DeflatedExplicitVRLittleEndian) + b"".join(parts)


def encapsulated_dicom(rows: int, cols: int, transfer_syntax, frame: bytes, **elements) -> bytes:
    """A file of ``transfer_syntax`` whose one encapsulated frame is ``frame`` (taken as it is)."""
    from pydicom.encaps import encapsulate

    ds = image_dataset(rows, cols, **elements)
    pixel = encapsulate([frame]) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)  # items, then the sequence delimiter
    body = _explicit_le(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + pixel
    return _file_meta(ds, transfer_syntax) + body


def rle_bomb(rows: int, cols: int, segment_bytes: int) -> bytes:
    """RLE Lossless, 8-bit, declaring ``rows`` x ``cols``, whose one segment is ``segment_bytes`` of
    replicate runs: each 2 bytes expand to 128, so the segment decodes to 64 x its size."""
    from pydicom.uid import RLELossless

    header = struct.pack("<16I", 1, 64, *([0] * 14))
    return encapsulated_dicom(rows, cols, RLELossless, header + b"\x81\x00" * (segment_bytes // 2))


def png_bomb(width: int, height: int, mode: str = "1", text_chunks: int = 0) -> bytes:
    """A PNG of zeros, ``mode`` "1" (1 bit gray), "L" or "RGB", streamed through zlib (a 30000 x 30000
    1-bit one is about 110 KB); ``text_chunks`` zTXt chunks of 1 MB of zeros each, before the image."""
    depth, colour, per_px = {"1": (1, 0, 1 / 8), "L": (8, 0, 1), "RGB": (8, 2, 3)}[mode]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))]
    text = b"Comment\0\0" + zlib.compress(bytes(1 << 20), 9)
    out += [chunk(b"zTXt", text)] * text_chunks
    comp = zlib.compressobj(9)
    row = bytes(1 + int(np.ceil(width * per_px)))
    rows_at_once = max(1, (1 << 22) // len(row))
    idat, left = [], height
    while left:
        n = min(left, rows_at_once)
        idat.append(comp.compress(row * n))
        left -= n
    idat.append(comp.flush())
    out += [chunk(b"IDAT", b"".join(idat)), chunk(b"IEND", b"")]
    return b"".join(out)


def tiff_tile_bomb(width: int = 64, height: int = 64, tile: int = 16384) -> bytes:
    """An 8-bit gray TIFF of ``width`` x ``height`` with one deflate tile declared ``tile`` x ``tile``, full of
    zeros (16384: 268 MB for libtiff's tile buffer, about 260 KB on disk)."""
    comp = zlib.compressobj(9)
    row = bytes(tile)
    pixels = b"".join(comp.compress(row) for _ in range(tile)) + comp.flush()
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1),
            (322, 4, tile), (323, 4, tile), (324, 4, None), (325, 4, len(pixels))]
    start = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(tags))
    for tag, kind, value in tags:
        value = start if value is None else value
        out += struct.pack("<HHIHH" if kind == 3 else "<HHII", tag, kind, 1, value, *([0] if kind == 3 else []))
    return out + struct.pack("<I", 0) + pixels


def segmented_lut_bomb(rows: int = 64, cols: int = 64, segments: int = 100_000) -> bytes:
    """PALETTE COLOR, 8-bit indices, 16-bit segmented LUTs: one discrete entry, then ``segments`` linear
    segments of 65 535 entries each (3 words apiece): 600 KB of LUT that pydicom would expand to 6.5e9 entries."""
    from pydicom.uid import ExplicitVRLittleEndian

    words = np.array([0, 1, 0] + [1, 65535, 65535] * segments, "<u2").tobytes()
    ds = image_dataset(rows, cols, PhotometricInterpretation="PALETTE COLOR")
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"Segmented{colour}PaletteColorLookupTableData", words)
    ds.PixelData = bytes(rows * cols)
    return _file_meta(ds, ExplicitVRLittleEndian) + _explicit_le(ds)


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real 64 x 64 baseline JPEG whose frame header is rewritten to claim ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _j2k_with_size(width: int, height: int) -> bytes:
    """A real 64 x 64 JPEG 2000 codestream whose SIZ segment is rewritten to claim ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buf, format="JPEG2000", no_jp2=True)
    data = bytearray(buf.getvalue())
    assert data[:4] == b"\xff\x4f\xff\x51"
    data[8:16] = struct.pack(">II", width, height)
    return bytes(data)


# ------------------------------------------------------------------ memory in a fresh process
_PROBE = r"""
import io, resource, sys
import numpy as np
import pydicom, pydicom.pixels, pydicom.encaps
from PIL import Image
from cxrcore.data.imageio import read_image
from cxrcore.errors import ImageError
from cxrcore.explain.ood import check_image, saturation_from_bytes

warm = io.BytesIO()
Image.fromarray(np.zeros((64, 64), np.uint8)).save(warm, format="PNG")
check_image(read_image(warm.getvalue()), raw=warm.getvalue())   # lazy imports and plugins, before the base
data = open(sys.argv[1], "rb").read()


def peak_kb():  # VmHWM: this process's peak resident size, which clear_refs resets; ru_maxrss elsewhere
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


try:  # reset the peak to the present resident size (Linux >= 4.0); elsewhere the bound is only looser
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = peak_kb()
try:
    if sys.argv[2] == "read":
        read_image(data, name="upload.dcm" if data[128:132] == b"DICM" else "upload.png")
        print("OUTCOME ok")
    else:
        print("OUTCOME saturation", saturation_from_bytes(data))
except ImageError as exc:
    print("OUTCOME ImageError", exc)
print("GROWTH_MB", (peak_kb() - base) / 1024)
"""


def peak_growth(data: bytes, tmp_path: Path, what: str = "read") -> tuple[float, str]:
    """(peak RSS growth in MB, outcome line) of reading ``data`` in a fresh interpreter."""
    path = tmp_path / "bomb.bin"
    path.write_bytes(data)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", _PROBE, str(path), what], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.startswith(("OUTCOME", "GROWTH_MB")))
    return float(lines["GROWTH_MB"]), lines["OUTCOME"]


# ------------------------------------------------------------------ Deflated DICOM
@pytest.fixture(scope="module")
def deflate_bomb() -> bytes:
    """Declares a plausible 64 x 64 image (4 KB), holds 200 MB of zero pixel data: about 200 KB on disk."""
    return deflated_dicom(64, 64, 200_000_000)


def test_deflate_bomb_is_small_on_disk(deflate_bomb):
    assert len(deflate_bomb) < 400_000


def test_deflate_bomb_refused(deflate_bomb):
    with pytest.raises(ImageError) as err:
        read_image(deflate_bomb, name="bomb.dcm")
    msg = str(err.value)
    assert msg.startswith('"bomb.dcm" is a deflated DICOM that inflates to more than')
    assert "64×64" in msg and "decompression bomb" in msg and "Export the image again" in msg


def test_deflate_bomb_memory_bounded(deflate_bomb, tmp_path):
    growth, outcome = peak_growth(deflate_bomb, tmp_path)
    assert outcome.startswith("ImageError") and "decompression bomb" in outcome
    assert growth < BOUND_MB, f"peak RSS grew by {growth:.0f} MB reading a 200 MB deflate bomb"


def test_deflate_bomb_tiny_declared_refused_before_inflating(tmp_path):
    # the reproduced report: 10 x 10 declared, 400 MB of pixel data, 400 KB on disk
    bomb = deflated_dicom(10, 10, 400_000_000)
    growth, outcome = peak_growth(bomb, tmp_path)
    assert outcome.startswith("ImageError") and "too small to be a radiograph" in outcome
    assert growth < BOUND_MB


def test_deflate_huge_declared_size_refused_before_inflating(tmp_path):
    bomb = deflated_dicom(20000, 20000, 1_000_000)  # declares 400 MP
    with pytest.raises(ImageError, match="megapixel limit"):
        read_image(bomb, name="big.dcm")
    frames = deflated_dicom(512, 512, 1_000_000, NumberOfFrames=400)  # 105 MP in 400 frames
    with pytest.raises(ImageError, match="400 frames of 512×512 pixels .* megapixels in all"):
        read_image(frames, name="cine.dcm")
    growth, outcome = peak_growth(bomb, tmp_path)
    assert "megapixel limit" in outcome and growth < BOUND_MB


def test_deflate_bomb_before_the_image_description_refused(tmp_path):
    # 100 MB of zeros in a private element (0019,1010), before Rows / Columns are known
    bomb = deflated_dicom(64, 64, 100_000_000, tag=0x00191010)
    with pytest.raises(ImageError, match=f"inflates to more than {HEADER_ALLOWANCE >> 20} MB before declaring"):
        read_image(bomb, name="private.dcm")
    growth, _ = peak_growth(bomb, tmp_path)
    assert growth < BOUND_MB


def test_deflated_dicom_still_reads_like_uncompressed():
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    arr = np.random.default_rng(5).integers(0, 4096, (96, 80), dtype=np.uint16)
    ds = image_dataset(96, 80, bits=16, BitsStored=12, HighBit=11, WindowCenter=2048, WindowWidth=4096)
    ds.PixelData = arr.tobytes()
    out = {}
    for ts in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        buf = io.BytesIO()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(buf, enforce_file_format=True)
        out[ts] = buf.getvalue()
    assert len(out[DeflatedExplicitVRLittleEndian]) < len(out[ExplicitVRLittleEndian])
    deflated = read_image(out[DeflatedExplicitVRLittleEndian], name="deflated.dcm")
    plain = read_image(out[ExplicitVRLittleEndian], name="plain.dcm")
    assert "DICOM transfer syntax: Deflated Explicit VR Little Endian" in deflated.notes
    assert deflated.original_shape == (96, 80) and deflated.bit_depth == 12
    np.testing.assert_array_equal(deflated.pixels, plain.pixels)
    assert deflated.pixels.std() > 0.1


def test_deflated_dicom_of_exact_size_reads():
    # the bomb builder with exactly the declared pixel data: a legitimate file, read in full
    img = read_image(deflated_dicom(64, 64, 64 * 64), name="zeros.dcm")
    assert img.original_shape == (64, 64) and "constant image (all pixels equal)" in img.notes


def test_truncated_deflated_dicom_refused_cleanly():
    data = deflated_dicom(64, 64, 64 * 64)
    for cut in (len(data) - 20, 400, 200):
        with pytest.raises(ImageError):
            read_image(data[:cut], name="cut.dcm")


# ------------------------------------------------------------------ compressed DICOM frames
def test_rle_bomb_refused_with_bounded_memory(tmp_path):
    bomb = rle_bomb(64, 64, 4_000_000)  # 4 MB of runs: 256 MB decoded for a 4 KB image
    with pytest.raises(ImageError, match="RLE data that expands beyond its declared 64×64 pixels"):
        read_image(bomb, name="rle.dcm")
    growth, outcome = peak_growth(bomb, tmp_path)
    assert "decompression bomb" in outcome and growth < BOUND_MB


def test_jpeg_frame_larger_than_declared_refused(tmp_path):
    from pydicom.uid import JPEGBaseline8Bit

    bomb = encapsulated_dicom(64, 64, JPEGBaseline8Bit, _jpeg_with_size(12000, 12000))
    with pytest.raises(ImageError, match="compressed image of 12000×12000 pixels .* declares 64×64"):
        read_image(bomb, name="jpeg.dcm")
    growth, outcome = peak_growth(bomb, tmp_path)
    assert "decompression bomb" in outcome and growth < BOUND_MB
    ok = encapsulated_dicom(64, 64, JPEGBaseline8Bit, _jpeg_with_size(64, 64))
    assert read_image(ok, name="ok.dcm").original_shape == (64, 64)


def test_j2k_frame_larger_than_declared_refused():
    from pydicom.uid import JPEG2000Lossless

    bomb = encapsulated_dicom(64, 64, JPEG2000Lossless, _j2k_with_size(12000, 12000))
    with pytest.raises(ImageError, match="compressed image of 12000×12000 pixels"):
        read_image(bomb, name="j2k.dcm")
    ok = encapsulated_dicom(64, 64, JPEG2000Lossless, _j2k_with_size(64, 64))
    assert read_image(ok, name="ok.dcm").original_shape == (64, 64)


def test_unreadable_frame_header_and_unknown_compression_refused():
    from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless

    with pytest.raises(ImageError, match="image header could not be read"):
        read_image(encapsulated_dicom(64, 64, JPEGLSLossless, b"\xff\xd8\xff\xda" + bytes(100)), name="x.dcm")
    with pytest.raises(ImageError, match="image header could not be read"):
        read_image(encapsulated_dicom(64, 64, JPEGBaseline8Bit, _jpeg_with_size(0, 64)), name="x.dcm")
    # JPEG XL (2023): pydicom 3.0 has no decoder; refused by name, before any decoding is tried
    with pytest.raises(ImageError):
        read_image(encapsulated_dicom(64, 64, "1.2.840.10008.1.2.4.110", b"\xff\x0a" + bytes(64)), name="jxl.dcm")


def test_segmented_palette_lut_bomb_refused(tmp_path):
    bomb = segmented_lut_bomb()
    with pytest.raises(ImageError, match="segmented palette colour lookup table"):
        read_image(bomb, name="palette.dcm")
    growth, outcome = peak_growth(bomb, tmp_path)
    assert "ImageError" in outcome and growth < BOUND_MB


# ------------------------------------------------------------------ PIL formats and the OOD guard
@pytest.fixture(scope="module")
def png_1bit_bomb() -> bytes:
    return png_bomb(30000, 30000)  # 900 MP, 1 bit: about 110 KB


@pytest.fixture(scope="module")
def png_rgb_64mp() -> bytes:
    return png_bomb(8000, 8000, "RGB")  # 64 MP: under PIL's own error (2 x 89 MP) and warning (89 MP) sizes


def test_png_bombs_refused(png_1bit_bomb, png_rgb_64mp):
    assert len(png_1bit_bomb) < 300_000 and len(png_rgb_64mp) < 400_000
    for data in (png_1bit_bomb, png_rgb_64mp):
        with pytest.raises(ImageError, match="megapixel"):
            read_image(data, name="bomb.png")
        with pytest.raises(ImageError, match="megapixel"):
            open_image(data, name="bomb.png")


def test_png_bomb_memory_bounded(png_rgb_64mp, tmp_path):
    growth, outcome = peak_growth(png_rgb_64mp, tmp_path)
    assert "megapixel limit" in outcome and growth < BOUND_MB


def test_ood_guard_goes_through_the_guarded_opener(png_1bit_bomb, png_rgb_64mp, tmp_path):
    # before: saturation_from_bytes opened the raw bytes with every PIL format and decoded the whole
    # 64 MP RGB image (about 200 MB, then HSV); now the header is checked first and it gives up
    assert saturation_from_bytes(png_rgb_64mp) is None
    assert saturation_from_bytes(png_1bit_bomb) is None
    growth, outcome = peak_growth(png_rgb_64mp, tmp_path, what="ood")
    assert outcome == "saturation None" and growth < BOUND_MB
    ok = read_image(png_bomb(64, 64, "L"))
    result = check_image(ok, raw=png_rgb_64mp)  # a refused raw upload: no saturation statistic, no crash
    assert "saturation" not in result.stats
    rgb = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), (200, 20, 20), np.uint8)).save(rgb, format="PNG")
    assert saturation_from_bytes(rgb.getvalue()) > 0.5  # a real colour upload is still measured


def test_png_text_chunks_stay_bounded(tmp_path):
    # zTXt chunks of 1 MB each (about 1 KB compressed): PIL inflates at most 1 MB a chunk and refuses
    # a file past 64 MB of text; the image itself is fine and reads below that
    data = png_bomb(64, 64, "L", text_chunks=60)
    assert len(data) < 200_000
    assert read_image(data, name="text.png").original_shape == (64, 64)
    growth, outcome = peak_growth(data, tmp_path)
    assert outcome == "ok" and growth < BOUND_MB
    data = png_bomb(64, 64, "L", text_chunks=1000)
    with pytest.raises(ImageError, match="corrupt"):
        read_image(data, name="text.png")
    growth, outcome = peak_growth(data, tmp_path)
    assert outcome.startswith("ImageError") and growth < BOUND_MB


def test_tiff_tile_bomb_refused(tmp_path):
    bomb = tiff_tile_bomb()
    assert len(bomb) < 400_000
    with pytest.raises(ImageError, match="64×64 TIFF whose tiles are declared 16384×16384"):
        read_image(bomb, name="tiles.tif")
    assert saturation_from_bytes(bomb) is None
    growth, outcome = peak_growth(bomb, tmp_path)
    assert "decompression bomb" in outcome and growth < BOUND_MB
    assert read_image(tiff_tile_bomb(64, 64, 256), name="ok.tif").original_shape == (64, 64)  # a sane tile size


def test_limits_do_not_touch_pil_globals():
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError):
        read_image(png_bomb(8000, 8000), name="bomb.png")
    assert Image.MAX_IMAGE_PIXELS == before and MAX_PIXELS < before


# ------------------------------------------------------------------ the REST service
def test_rest_predict_refuses_bombs_with_400(shipped, deflate_bomb, png_rgb_64mp):
    import base64

    from cxrcore.api import ApiError, Service

    service = Service([shipped["baseline"]], token=None)
    for data, name in ((deflate_bomb, "bomb.dcm"), (rle_bomb(64, 64, 400_000), "rle.dcm"), (png_rgb_64mp, "bomb.png")):
        with pytest.raises(ApiError) as err:
            service.predict({"image": base64.b64encode(data).decode(), "name": name})
        assert err.value.status == 400 and name in err.value.message
        assert "decompression bomb" in err.value.message or "megapixel limit" in err.value.message
    batch = service.predict_batch({"items": [{"image": base64.b64encode(deflate_bomb).decode(), "name": "a.dcm"}]})
    assert "decompression bomb" in json.dumps(batch, ensure_ascii=False)
