"""Tests for cxrcore.data.imageio: real sample files plus generated edge cases."""
from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from cxrcore.data.imageio import LoadedImage, read_image, to_uint8
from cxrcore.errors import ImageError

from conftest import FORMATS

MONO2_DCM = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
MONO1_DCM = FORMATS / "Fake_MONOHR1.dcm"
NIH_PNGS = [FORMATS / "00000001_000.png", FORMATS / "00027426_000.png"]
RGB_PNGS = [FORMATS / "nih_rgb_tinted_a.png", FORMATS / "nih_rgb_tinted_b.png"]
SMALL_JPEG = FORMATS / "nih_rgb_1036x885.jpg"
LARGE_JPEG = FORMATS / "nih_rgb_2373.jpg"



def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a valid CRC) claims width×height, followed by a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def _assert_valid(img: LoadedImage) -> None:
    assert isinstance(img, LoadedImage)
    assert img.pixels.dtype == np.float32 and img.pixels.ndim == 2
    assert img.pixels.flags.c_contiguous
    assert img.original_shape == img.pixels.shape
    assert 0.0 <= float(img.pixels.min()) and float(img.pixels.max()) <= 1.0


def _dicom_bytes(pixels: np.ndarray | None = None, *, preamble: bool = True, **elements) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1" if pixels is not None else "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX" if pixels is not None else "SR"
    for key, value in elements.items():
        setattr(ds, key, value)
    if pixels is not None:
        frames = pixels.shape[0] if pixels.ndim == 3 else 1
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = elements.get("PhotometricInterpretation", "MONOCHROME2")
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = elements.get("BitsStored", ds.BitsAllocated)
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        ds.save_as(buf, implicit_vr=False, little_endian=True)
    return buf.getvalue()


# ------------------------------------------------------------------ real sample files
@pytest.mark.parametrize("path", NIH_PNGS, ids=lambda p: p.name)
def test_nih_png(path):
    img = read_image(path)
    _assert_valid(img)
    assert img.source_format == "PNG" and img.bit_depth == 8
    assert img.original_shape == (512, 512)
    assert img.notes == []
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)


@pytest.mark.parametrize("path", RGB_PNGS, ids=lambda p: p.name)
def test_rgb_png_becomes_luminance(path):
    img = read_image(path)
    _assert_valid(img)
    assert img.original_shape == (512, 512)
    assert "RGB converted to grayscale" in img.notes
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    assert np.abs(img.pixels - expected).max() <= 1 / 255 + 1e-6  # PIL rounds to 8 bits


def test_rgb_jpeg_height_width():
    img = read_image(SMALL_JPEG)
    _assert_valid(img)
    assert img.source_format == "JPEG"
    assert img.original_shape == (885, 1036)  # the file is 1036 wide, 885 high
    assert "RGB converted to grayscale" in img.notes


def test_large_jpeg():
    img = read_image(LARGE_JPEG)
    _assert_valid(img)
    assert img.original_shape == (2373, 2373)
    assert img.pixels.std() > 0.05


def test_dicom_jpeg_baseline_decodes():
    img = read_image(MONO2_DCM)
    _assert_valid(img)
    assert img.source_format == "DICOM" and img.bit_depth == 8
    assert img.original_shape == (1024, 1024)
    assert "DICOM transfer syntax: JPEG Baseline (Process 1)" in img.notes
    assert "modality CR" in img.notes
    assert "MONOCHROME1 inverted" not in img.notes
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0  # min–max without a VOI window
    assert img.pixels.std() > 0.1


def test_monochrome1_file_is_inverted():
    # Fake_MONOHR1.dcm holds byte-for-byte the same pixel data as the MONOCHROME2 file, only the
    # Photometric Interpretation says MONOCHROME1 (low = white). Honouring that declaration turns
    # the image into the negative of the MONOCHROME2 reading.
    mono2 = read_image(MONO2_DCM)
    mono1 = read_image(MONO1_DCM)
    _assert_valid(mono1)
    assert "MONOCHROME1 inverted" in mono1.notes
    assert "photometric interpretation MONOCHROME1" in mono1.notes
    corr = np.corrcoef(mono1.pixels.ravel(), mono2.pixels.ravel())[0, 1]
    assert corr < -0.99
    undo = 1.0 - mono1.pixels  # what the pixels were before the inversion
    assert np.corrcoef(undo.ravel(), mono2.pixels.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(undo, mono2.pixels, atol=1e-6)


@pytest.mark.parametrize("path", [NIH_PNGS[0], RGB_PNGS[0], SMALL_JPEG, MONO2_DCM, MONO1_DCM],
                         ids=lambda p: p.name[:20])
def test_bytes_and_path_identical(path):
    a = read_image(path)
    b = read_image(path.read_bytes(), name=path.name)
    assert np.array_equal(a.pixels, b.pixels)
    assert (a.source_format, a.bit_depth, a.original_shape, a.notes) == \
           (b.source_format, b.bit_depth, b.original_shape, b.notes)


@pytest.mark.parametrize("path", [NIH_PNGS[0], SMALL_JPEG], ids=lambda p: p.name)
def test_truncated_real_files(path):
    data = path.read_bytes()
    with pytest.raises(ImageError, match="truncated or corrupt") as err:
        read_image(data[: len(data) // 2], name=path.name)
    assert path.name in str(err.value) and "re-export" in str(err.value)


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_truncated_dicom():
    data = MONO2_DCM.read_bytes()
    with pytest.raises(ImageError):
        read_image(data[: len(data) // 2], name="cut.dcm")


# ------------------------------------------------------------------ generated PIL cases
def test_truncated_image_tolerance_not_enabled():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_grayscale_png_exact(tmp_path):
    arr = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    p = tmp_path / "g.png"
    p.write_bytes(_png_bytes(arr))
    img = read_image(p)
    assert img.original_shape == (48, 64)
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-7)


@pytest.mark.parametrize("top", [4095, 65535])
def test_16bit_png_keeps_precision(tmp_path, top):
    arr = np.linspace(0, top, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    p = tmp_path / "deep.png"
    p.write_bytes(_png_bytes(arr))
    assert Image.open(p).mode.startswith("I")
    img = read_image(p)
    _assert_valid(img)
    assert img.bit_depth == 16
    assert len(np.unique(img.pixels)) > 256
    np.testing.assert_allclose(img.pixels, arr / 65535.0, rtol=0, atol=1e-6)
    assert img.pixels.max() == pytest.approx(top / 65535.0)


def test_rgba_png_composited_on_black():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[:20, :, 3] = 255  # top half opaque, bottom half fully transparent
    img = read_image(_png_bytes(rgba, "RGBA"), name="a.png")
    _assert_valid(img)
    lum = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(img.pixels[:20], lum, atol=1e-5)
    assert np.all(img.pixels[20:] == 0)
    assert "RGB converted to grayscale" in img.notes
    assert "transparency composited on black" in img.notes


def test_la_and_palette_png():
    la = np.zeros((40, 40, 2), np.uint8)
    la[..., 0], la[..., 1] = 180, 255
    img = read_image(_png_bytes(la, "LA"))
    np.testing.assert_allclose(img.pixels, 180 / 255, atol=1e-6)

    pal = Image.fromarray((np.arange(1600) % 256).astype(np.uint8).reshape(40, 40)).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    img = read_image(buf.getvalue())
    _assert_valid(img)
    assert img.original_shape == (40, 40)


def test_jpeg_exif_orientation_6_rotates():
    arr = np.full((40, 64), 30, np.uint8)  # 64 wide, 40 high as stored
    arr[:10, :10] = 250  # bright marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", exif=exif, quality=95)
    img = read_image(buf.getvalue(), name="rot.jpg")
    assert img.source_format == "JPEG"
    assert img.original_shape == (64, 40)  # height and width swapped
    assert any(n.startswith("EXIF orientation applied") for n in img.notes)
    # orientation 6 = rotate 90° clockwise for display: top-left goes to top-right
    assert img.pixels[:8, -8:].mean() > 0.8 and img.pixels[:8, :8].mean() < 0.3


def test_tiff_and_bmp():
    arr = (np.arange(50 * 60) % 256).astype(np.uint8).reshape(50, 60)
    for fmt in ("TIFF", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        img = read_image(buf.getvalue())
        assert img.source_format == fmt
        np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-7)


def test_constant_image_allowed_with_note():
    img = read_image(_png_bytes(np.full((40, 40), 77, np.uint8)))
    assert "constant image (all pixels equal)" in img.notes
    assert np.all(img.pixels == np.float32(77 / 255))


# ------------------------------------------------------------------ guards
def test_empty_bytes_and_empty_file(tmp_path):
    with pytest.raises(ImageError, match=r"The upload is empty \(0 bytes\)"):
        read_image(b"", name="x.png")
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_text_file_rejected(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("Patient looked fine.\nNothing to see here.\n" * 20)
    with pytest.raises(ImageError) as err:
        read_image(p)
    msg = str(err.value)
    assert "notes.txt" in msg and "text file" in msg
    assert "PNG" in msg and "JPEG" in msg and "DICOM" in msg


@pytest.mark.parametrize("data,kind", [
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
    (None, "ZIP"),
    (bytes(range(7, 256)) * 8, "not a recognised image format"),
])
def test_other_non_images_rejected(data, kind):
    if data is None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("a.txt", "hello")
        data = buf.getvalue()
    with pytest.raises(ImageError, match=kind) as err:
        read_image(data, name="upload.bin")
    assert "upload.bin" in str(err.value) and "DICOM" in str(err.value)


def test_garbled_png_header_is_corrupt_not_unknown():
    data = _png_bytes(np.zeros((40, 40), np.uint8))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        read_image(data[:20], name="short.png")


def test_tiny_images_rejected():
    with pytest.raises(ImageError, match="1×1 pixels is too small to be a radiograph; need at least 32×32"):
        read_image(_png_bytes(np.zeros((1, 1), np.uint8)), name="dot.png")
    with pytest.raises(ImageError, match="too small"):
        read_image(_png_bytes(np.zeros((31, 200), np.uint8)))
    assert read_image(_png_bytes(np.zeros((32, 32), np.uint8))).original_shape == (32, 32)


@pytest.mark.parametrize("side", [8000, 20000])
def test_decompression_bomb_refused(side):
    # 8000² = 64 MP passes PIL's own limit and hits ours; 20000² is refused by PIL at open
    with pytest.raises(ImageError, match="megapixel"):
        read_image(_png_header_only(side, side), name="bomb.png")


# ------------------------------------------------------------------ generated DICOM cases
def test_dicom_without_pixel_data():
    data = _dicom_bytes(None)
    with pytest.raises(ImageError, match="no image") as err:
        read_image(data, name="report.dcm")
    assert "image DICOM" in str(err.value)


def test_dicom_phi_never_leaks(caplog):
    phi = dict(PatientName="Doe^Jane", PatientID="12345", PatientBirthDate="19700101",
               PatientAge="054Y", StudyDate="20240102", AccessionNumber="ACC98765",
               InstitutionName="General Hospital")
    arr = (np.arange(64 * 64) % 4096).astype(np.uint16).reshape(64, 64)
    caplog.set_level("DEBUG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = read_image(_dicom_bytes(arr, BitsStored=12, **phi), name="scan.dcm")
    logged = caplog.text + " ".join(str(w.message) for w in caught)
    _assert_valid(img)
    assert img.bit_depth == 12
    text = repr(img) + str(img) + " ".join(img.notes) + logged
    for secret in ("Doe", "Jane", "12345", "1970", "054Y", "2024", "ACC98765", "General Hospital"):
        assert secret not in text
    assert set(vars(img)) == {"pixels", "source_format", "bit_depth", "original_shape", "notes", "synthetic"}
    assert img.synthetic is False

    with pytest.raises(ImageError) as err:
        read_image(_dicom_bytes(None, **phi), name="report.dcm")
    msg = str(err.value) + repr(err.value)
    for secret in ("Doe", "Jane", "12345", "1970", "ACC98765"):
        assert secret not in msg


def test_dicom_window_and_rescale():
    arr = np.tile(np.arange(64, dtype=np.uint16) * 64, (64, 1))  # 0 .. 4032 along x
    # HU = 2 * stored - 1000; window 0 ± 500 HU -> stored 250 .. 750 maps 0 .. 1
    data = _dicom_bytes(arr, BitsStored=12, RescaleSlope=2, RescaleIntercept=-1000,
                        WindowCenter=0, WindowWidth=1000)
    img = read_image(data, name="w.dcm")
    assert "modality LUT applied" in img.notes
    assert any(n.startswith("VOI LUT applied") for n in img.notes)
    row = img.pixels[0]
    assert row[0] == 0.0 and row[-1] == 1.0  # clipped outside the window
    mid = np.argmin(np.abs(arr[0].astype(float) * 2 - 1000))  # stored 500 -> 0 HU -> centre
    assert row[mid] == pytest.approx(0.5, abs=0.06)
    assert np.all(np.diff(row) >= 0)


def test_dicom_without_window_is_min_max():
    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 1000) + 100
    img = read_image(_dicom_bytes(arr), name="plain.dcm")
    assert "scaled min–max (no VOI window)" in img.notes
    np.testing.assert_allclose(img.pixels, (arr - 100) / 999.0, atol=1e-6)


def test_dicom_monochrome1_matches_monochrome2_of_inverted_data():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 4096, (64, 64), dtype=np.uint16)
    m2 = read_image(_dicom_bytes(arr, BitsStored=12), name="m2.dcm")
    m1 = read_image(_dicom_bytes((4095 - arr).astype(np.uint16), BitsStored=12,
                                 PhotometricInterpretation="MONOCHROME1"), name="m1.dcm")
    assert "MONOCHROME1 inverted" in m1.notes
    assert np.corrcoef(m1.pixels.ravel(), m2.pixels.ravel())[0, 1] > 0.99
    assert np.corrcoef((1 - m1.pixels).ravel(), m2.pixels.ravel())[0, 1] < -0.99


def test_dicom_multiframe_takes_first_frame():
    frames = np.stack([np.full((40, 40), 10, np.uint16), np.full((40, 40), 900, np.uint16)])
    frames[0, :20] = 500
    img = read_image(_dicom_bytes(frames), name="multi.dcm")
    assert img.original_shape == (40, 40)
    assert "first of 2 frames used" in img.notes
    assert img.pixels[:20].mean() == 1.0 and img.pixels[20:].mean() == 0.0


def test_dicom_without_preamble_by_name_or_content():
    arr = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) % 300)
    data = _dicom_bytes(arr, preamble=False)
    assert data[128:132] != b"DICM"
    ref = read_image(_dicom_bytes(arr))
    for name in ("raw.dcm", None):
        img = read_image(data, name=name)
        assert img.source_format == "DICOM"
        np.testing.assert_array_equal(img.pixels, ref.pixels)


def test_dicom_rle_compressed_matches_native():
    from pydicom import dcmread
    from pydicom.uid import RLELossless

    arr = np.random.default_rng(2).integers(0, 4096, (48, 48), dtype=np.uint16)
    native = _dicom_bytes(arr, BitsStored=12)
    ds = dcmread(io.BytesIO(native))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf)
    img = read_image(buf.getvalue(), name="rle.dcm")
    assert "DICOM transfer syntax: RLE Lossless" in img.notes
    np.testing.assert_array_equal(img.pixels, read_image(native).pixels)


def test_dicom_too_large_checked_before_decoding():
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(_dicom_bytes(np.zeros((40, 40), np.uint16))))
    ds.Rows, ds.Columns = 10000, 10000  # header claims 100 MP; pixel data is tiny
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageError, match="megapixel"):
        read_image(buf.getvalue(), name="big.dcm")


# ------------------------------------------------------------------ to_uint8
def test_to_uint8():
    out = to_uint8(np.array([[0.0, 0.5, 1.0], [-1.0, 2.0, np.nan]], np.float32))
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    assert out.tolist() == [[0, 128, 255], [0, 255, 0]]
    with pytest.raises(ValueError):
        to_uint8(np.zeros((2, 2, 3)))


def test_to_uint8_round_trips_8bit():
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = read_image(_png_bytes(np.kron(arr, np.ones((2, 2), np.uint8))))
    assert np.array_equal(to_uint8(img.pixels)[::2, ::2], arr)
