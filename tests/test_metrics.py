"""chromify.metrics against scikit-image (the reference implementation), published numbers, and the textbook
formulas written out slowly (the fast paths evaluate uses must give their numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from metric_references import reference_colourfulness, reference_delta_e2000, reference_image_metrics
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from chromify.errors import DataError, GateError
from chromify.lab import lab_to_rgb8
from chromify.metrics import (
    PreparedTruth,
    colourfulness,
    delta_cf,
    delta_e2000,
    image_metrics,
    image_metrics_8bit,
    lab_to_rgb,
    psnr,
    rgb_to_lab,
    ssim,
    summarise,
)

PHOTOS = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}

# The 34 test pairs of Table 1 in G. Sharma, W. Wu and E. N. Dalal, "The CIEDE2000 color-difference formula:
# implementation notes, supplementary test data, and mathematical observations", Color Research & Application
# 30(1), 21-30 (2005): (L1, a1, b1), (L2, a2, b2), ΔE00 to 4 decimal places.
SHARMA_2005_TABLE_1 = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]
assert len(SHARMA_2005_TABLE_1) == 34, "the paper's table has 34 pairs"  # a typo here would hide a pair


def _random_lab(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(
        [rng.uniform(0, 100, shape), rng.uniform(-128, 127, shape), rng.uniform(-128, 127, shape)], axis=-1
    )


def _noisy(rgb: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rgb + rng.normal(0.0, sigma, rgb.shape), 0.0, 1.0)


def test_library_imports_without_scikit_image():
    code = "import sys, chromify.metrics; bad = {'skimage', 'scipy'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- CIEDE2000 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lab1", "lab2", "expected"), SHARMA_2005_TABLE_1)
def test_delta_e2000_matches_sharma_2005(lab1, lab2, expected):
    assert round(float(delta_e2000(np.array(lab1), np.array(lab2))), 4) == expected


def test_delta_e2000_is_vectorised_over_the_table():
    lab1 = np.array([row[0] for row in SHARMA_2005_TABLE_1])
    lab2 = np.array([row[1] for row in SHARMA_2005_TABLE_1])
    expected = np.array([row[2] for row in SHARMA_2005_TABLE_1])
    np.testing.assert_allclose(delta_e2000(lab1, lab2), expected, atol=5e-5)


@pytest.mark.parametrize("shape", [(1000,), (7, 13), (2, 3, 5)])
def test_delta_e2000_matches_skimage_on_random_lab(shape):
    rng = np.random.default_rng(sum(shape))
    lab1, lab2 = _random_lab(rng, shape), _random_lab(rng, shape)
    lab2.reshape(-1, 3)[::10, 1:] = 0.0  # zero chroma: hue undefined, a special case of the formula
    lab1.reshape(-1, 3)[::17, 1:] = 0.0
    ours = delta_e2000(lab1, lab2)
    assert ours.shape == shape
    np.testing.assert_allclose(ours, color.deltaE_ciede2000(lab1, lab2), rtol=1e-6, atol=1e-12)


def test_delta_e2000_of_a_colour_with_itself_is_zero():
    lab = _random_lab(np.random.default_rng(3), (50,))
    np.testing.assert_array_equal(delta_e2000(lab, lab), np.zeros(50))


def test_delta_e2000_of_one_pair_is_a_float():
    """A single pair gives a numpy float64, as it always has: json.dumps takes it and refuses a 0-d array."""
    lab1, lab2, expected = SHARMA_2005_TABLE_1[16]
    got = delta_e2000(np.array(lab1), np.array(lab2))
    assert type(got) is np.float64 and round(got, 4) == expected
    assert json.loads(json.dumps({"delta_e2000": got})) == {"delta_e2000": float(got)}
    assert delta_e2000(np.array([lab1]), np.array([lab2])).shape == (1,)


# --- sRGB ↔ Lab ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize("as_uint8", [True, False])
def test_rgb_to_lab_matches_skimage_on_photos(name, as_uint8):
    photo = PHOTOS[name]
    lab = rgb_to_lab(photo if as_uint8 else photo / 255.0)
    assert lab.dtype == np.float32 and lab.shape == photo.shape
    delta_e76 = np.linalg.norm(lab - color.rgb2lab(photo), axis=-1)
    assert delta_e76.max() < 0.5


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_lab_to_rgb_matches_skimage_on_photos(name):
    lab = color.rgb2lab(PHOTOS[name])
    rgb = lab_to_rgb(lab)
    assert rgb.dtype == np.float32 and rgb.shape == lab.shape
    np.testing.assert_allclose(rgb, color.lab2rgb(lab), atol=1e-4)
    assert np.linalg.norm(color.rgb2lab(rgb) - lab, axis=-1).max() < 0.5


def test_lab_to_rgb_clips_out_of_gamut_like_skimage():
    lab = _random_lab(np.random.default_rng(7), (40, 40)).astype(np.float32)
    rgb = lab_to_rgb(lab)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # skimage warns when it clips negative Z
        expected = color.lab2rgb(lab.astype(np.float64))
    np.testing.assert_allclose(rgb, expected, atol=1e-4)


def test_lab_round_trip_and_any_leading_shape():
    rgb = np.random.default_rng(1).uniform(0.0, 1.0, (2, 5, 6, 3))
    lab = rgb_to_lab(rgb)
    assert lab.shape == rgb.shape
    np.testing.assert_allclose(lab_to_rgb(lab), rgb, atol=1e-4)
    np.testing.assert_allclose(rgb_to_lab(np.array([1.0, 1.0, 1.0])), [100.0, 0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(rgb_to_lab(np.zeros(3, dtype=np.uint8)), [0.0, 0.0, 0.0], atol=1e-5)


def test_8_bit_rendering_rounds_back_to_the_pixels_it_came_from():
    """What evaluation scores and users see: an 8-bit photo through Lab and back is the same photo."""
    from chromify.lab import lab_to_rgb8

    grays = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    colours = np.random.default_rng(2).integers(0, 256, (4096, 3), dtype=np.uint8)
    for rgb in (grays, colours, PHOTOS["astronaut"]):
        back = lab_to_rgb8(rgb_to_lab(rgb))
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, rgb)
    assert lab_to_rgb8(np.array([100.0, 0.0, 0.0])).tolist() == [255, 255, 255]


# --- PSNR and SSIM ---------------------------------------------------------------------------------------


def test_psnr_known_value_and_cap():
    truth = np.full((4, 4, 3), 0.5)
    assert psnr(truth + 0.1, truth) == pytest.approx(20.0)  # MSE 0.01 → 10·log10(1 / 0.01)
    assert psnr(truth, truth) == 100.0
    assert psnr(truth + 1e-7, truth) == 100.0  # 140 dB would be meaningless; the cap holds


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_psnr_of_a_non_finite_prediction_is_nan_and_the_gate_refuses_it(bad):
    from chromify.gate import GateThresholds, ModelScore, decide

    truth = PHOTOS["astronaut"][:64, :64] / 255.0
    pred = truth.copy()
    pred[5, 7, 1] = bad  # one pixel of a diverged model's output
    assert np.isnan(psnr(pred, truth))  # not 100 dB (min(100, nan)) nor −inf
    gray = np.repeat(truth.mean(axis=-1, keepdims=True), 3, axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        candidate = summarise([image_metrics(pred, truth)])
    with pytest.raises(GateError, match="candidate 'diverged': metric 'psnr' is nan, not a finite number"):
        decide(ModelScore("diverged", candidate), summarise([image_metrics(gray, truth)]), None, GateThresholds())


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_psnr_matches_skimage(name):
    truth = PHOTOS[name] / 255.0
    pred = _noisy(truth, 0.05)
    assert psnr(pred, truth) == pytest.approx(peak_signal_noise_ratio(truth, pred, data_range=1.0), abs=1e-9)
    assert psnr(PHOTOS[name], (pred * 255).round().astype(np.uint8)) > 20.0


@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize("sigma", [0.02, 0.2])
def test_ssim_matches_skimage_on_photos(name, sigma):
    truth = PHOTOS[name] / 255.0
    pred = _noisy(truth, sigma)
    expected = structural_similarity(pred, truth, channel_axis=-1, data_range=1.0)
    assert ssim(pred, truth) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("shape", [(7, 7, 3), (9, 11, 3), (64, 33, 3)])
def test_ssim_matches_skimage_on_small_and_odd_images(shape):
    rng = np.random.default_rng(shape[1])
    a = rng.uniform(0, 1, shape).astype(np.float32)
    b = np.clip(0.7 * a + 0.3 * rng.uniform(0, 1, shape), 0, 1).astype(np.float32)
    expected = structural_similarity(a, b, channel_axis=-1, data_range=1.0)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-4)


def test_ssim_of_identical_images_is_one_and_rejects_tiny_images():
    photo = PHOTOS["chelsea"] / 255.0
    assert ssim(photo, photo) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="7"):
        ssim(np.zeros((6, 20, 3)), np.zeros((6, 20, 3)))
    with pytest.raises(ValueError, match="shape"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


# --- colourfulness ---------------------------------------------------------------------------------------

# 2×2 checkerboard of A = (140, 100, 90) and gray G = (100, 100, 100), on the 0–255 scale.
# A: rg = 140 − 100 = 40, yb = ½(140 + 100) − 90 = 30.   G: rg = 0, yb = 0.
# rg ∈ {40, 0, 0, 40}: μ = 20, σ = 20 (population).  yb ∈ {30, 0, 0, 30}: μ = 15, σ = 15.
# CF = √(20² + 15²) + 0.3·√(20² + 15²) = 25 + 0.3·25 = 32.5
CHECKER = np.array([[[140, 100, 90], [100, 100, 100]], [[100, 100, 100], [140, 100, 90]]], dtype=np.uint8)

# Signed vs absolute: B = (140, 100, 90) and C = (100, 140, 90) give rg ∈ {+40, −40}: μ_rg = 0, σ_rg = 40;
# yb = ½·240 − 90 = 30 for both: μ_yb = 30, σ_yb = 0.  CF = √(40² + 0²) + 0.3·√(0² + 30²) = 40 + 9 = 49.
# (With |rg|, as DDColor/CT2 compute it, μ_rg would be 40 and σ_rg 0, giving 0 + 0.3·50 = 15.)
RED_GREEN = np.array([[[140, 100, 90], [100, 140, 90]]], dtype=np.uint8)


def test_colourfulness_hand_computed():
    assert colourfulness(CHECKER) == pytest.approx(32.5)
    assert colourfulness(CHECKER / 255.0) == pytest.approx(32.5)
    assert colourfulness(RED_GREEN) == pytest.approx(49.0)


def test_colourfulness_gray_is_zero_and_saturation_raises_it():
    gray = np.repeat(np.random.default_rng(0).uniform(0, 1, (16, 16, 1)), 3, axis=-1)
    assert colourfulness(gray) == pytest.approx(0.0, abs=1e-9)
    photo = PHOTOS["coffee"] / 255.0
    luma = photo.mean(axis=-1, keepdims=True)
    dull = luma + 0.3 * (photo - luma)
    assert colourfulness(photo) > colourfulness(dull) > 0.0
    assert colourfulness(dull) == pytest.approx(0.3 * colourfulness(photo))  # CF is linear in chroma scale


def test_delta_cf_is_absolute_difference():
    assert delta_cf(30.0, 42.5) == 12.5
    assert delta_cf(42.5, 30.0) == 12.5


# --- per-image rows and their summary --------------------------------------------------------------------


def test_image_metrics_of_perfect_and_gray_prediction():
    truth = PHOTOS["astronaut"][:128, :128] / 255.0
    perfect = image_metrics(truth, truth)
    assert set(perfect) == {"psnr", "ssim", "delta_e2000", "colourfulness", "colourfulness_truth"}
    assert perfect["psnr"] == 100.0
    assert perfect["ssim"] == pytest.approx(1.0)
    assert perfect["delta_e2000"] == pytest.approx(0.0, abs=1e-3)
    assert perfect["colourfulness"] == perfect["colourfulness_truth"] > 0.0

    gray = np.repeat(truth.mean(axis=-1, keepdims=True), 3, axis=-1)
    row = image_metrics(gray, truth)
    assert all(isinstance(v, float) for v in row.values())
    assert row["colourfulness"] == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < row["ssim"] < 1.0 and row["delta_e2000"] > 1.0 and row["psnr"] < 100.0


def test_summarise_means_and_delta_cf():
    rows = [
        {"psnr": 20.0, "ssim": 0.8, "delta_e2000": 5.0, "colourfulness": 10.0, "colourfulness_truth": 30.0},
        {"psnr": 24.0, "ssim": 0.9, "delta_e2000": 3.0, "colourfulness": 50.0, "colourfulness_truth": 40.0},
    ]
    summary = summarise(rows)
    assert summary == pytest.approx(
        {
            "psnr": 22.0,
            "ssim": 0.85,
            "delta_e2000": 4.0,
            "colourfulness": 30.0,
            "colourfulness_truth": 35.0,
            "delta_cf": 5.0,  # |30 − 35| on the means, not the mean of per-image |10 − 30| and |50 − 40|
        }
    )


def test_summarise_rejects_empty_and_ragged_rows():
    with pytest.raises(DataError, match="empty"):
        summarise([])
    with pytest.raises(DataError, match="keys"):
        summarise([{"psnr": 1.0, "colourfulness": 1.0, "colourfulness_truth": 1.0}, {"psnr": 2.0}])


# --- the fast paths against slow references --------------------------------------------------------------
# evaluate scores 8-bit renderings with image_metrics_8bit against a PreparedTruth, and the metrics work in strips
# and blocks with little trigonometry: each is pinned here to skimage and to tests/metric_references.py, the
# metrics as they were before the fast path (whole images, a summed-area SSIM, CIEDE2000 a trigonometric call per
# angle), which share no code with it.


def _lab_pairs_around_the_hue_circle() -> tuple[np.ndarray, np.ndarray]:
    """Pairs at every 7.5° of hue, 0.5° to 179.5° apart either way (so across 0°/360° too), with chroma 0 (gray,
    a = b = 0), barely coloured or vivid on either side."""
    lab1, lab2 = [], []
    for c1 in (0.0, 0.3, 5.0, 60.0):
        for c2 in (0.0, 0.3, 5.0, 60.0):
            for h in np.radians(np.arange(0.0, 360.0, 7.5)):
                for apart in np.radians([-179.5, -120.0, -10.0, -0.5, 0.5, 10.0, 120.0, 179.5]):
                    lab1.append((50 + 30 * np.sin(h), c1 * np.cos(h), c1 * np.sin(h)))
                    lab2.append((60 - 20 * np.cos(h), c2 * np.cos(h + apart), c2 * np.sin(h + apart)))
    return np.array(lab1), np.array(lab2)


def test_delta_e2000_matches_skimage_around_the_hue_circle_and_on_gray():
    lab1, lab2 = _lab_pairs_around_the_hue_circle()
    ours = delta_e2000(lab1, lab2)
    assert np.isfinite(ours).all() and (ours[np.all(lab1 == lab2, axis=-1)] == 0.0).all()
    # 1e-8, not 1e-12: where the hue mean is exactly 0° skimage takes it as 360°, a jump of the formula (~1e-9 here)
    np.testing.assert_allclose(ours, color.deltaE_ciede2000(lab1, lab2), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours, reference_delta_e2000(lab1, lab2), rtol=1e-12, atol=1e-12)


def test_delta_e2000_takes_the_textbook_side_of_its_jumps():
    """Exactly opposite hues (ΔH' changes sign) and hues mirrored about the a axis (hue mean 0° or 360°) are where
    the formula jumps; rounding picks the side, and the fast form must pick as the textbook steps do."""
    rng = np.random.default_rng(5)
    L1, L2, a, b = rng.uniform(0, 100, 4000), rng.uniform(0, 100, 4000), *rng.uniform(-90, 90, (2, 4000))
    lab = np.stack([L1, a, b], axis=-1).astype(np.float32)  # float32 values, as rgb_to_lab gives
    for other in (np.stack([L2, -a, -b], axis=-1), np.stack([L2, a, -b], axis=-1)):
        other = other.astype(np.float32)
        np.testing.assert_allclose(delta_e2000(lab, other), reference_delta_e2000(lab, other), rtol=1e-12)


def _crop(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.ascontiguousarray(rgb[: shape[0], : shape[1], :3])


def _renderings(truth8: np.ndarray) -> dict[str, np.ndarray]:
    """What evaluate scores against a truth: colours under its L rendered to 8 bits. Gray (ab = 0), washed out,
    hue-rotated by 150°, noisy, and the truth itself."""
    lab = rgb_to_lab(truth8)
    ab = lab[..., 1:]
    turn = np.radians(150.0)
    rotated = ab @ np.array([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]], dtype=np.float32)
    noise = np.random.default_rng(0).normal(0.0, 6.0, ab.shape).astype(np.float32)
    out = {"perfect": truth8}
    for name, new_ab in (("gray", 0.0), ("washed out", 0.4 * ab), ("hue-rotated", rotated), ("noisy", ab + noise)):
        pred = lab.copy()
        pred[..., 1:] = new_ab
        out[name] = lab_to_rgb8(pred)
    return out


def _as_scored(rgb8: np.ndarray) -> np.ndarray:
    """8-bit values as evaluate has always scored them: float32 k / 255."""
    return rgb8.astype(np.float32) / 255.0


# Photos at sizes that end strips and blocks part-way, one gray truth (a = b ≈ 0 everywhere) among them.
FAST_PATH_CASES = [("astronaut", (61, 47)), ("chelsea", (256, 256)), ("coffee", (100, 257)), ("camera", (39, 90))]


def _truth(name: str, shape: tuple[int, int]) -> np.ndarray:
    photo = data.camera()[..., None].repeat(3, axis=-1) if name == "camera" else PHOTOS[name]
    return _crop(photo, shape)


@pytest.mark.parametrize(("name", "shape"), FAST_PATH_CASES)
def test_8bit_fast_path_matches_skimage_and_the_textbook(name, shape):
    truth8 = _truth(name, shape)
    prepared = PreparedTruth(truth8)
    truth = _as_scored(truth8).astype(np.float64)
    truth_lab = rgb_to_lab(_as_scored(truth8)).astype(np.float64)  # skimage computes in its input's precision
    for kind, pred8 in _renderings(truth8).items():
        got = image_metrics_8bit(pred8, prepared)
        pred = _as_scored(pred8).astype(np.float64)
        identical = np.array_equal(pred8, truth8)  # the truth, and gray against the gray photo
        want = {
            "psnr": 100.0 if identical else peak_signal_noise_ratio(truth, pred, data_range=1.0),
            "ssim": structural_similarity(pred, truth, channel_axis=-1, data_range=1.0),
            "delta_e2000": color.deltaE_ciede2000(rgb_to_lab(_as_scored(pred8)).astype(np.float64), truth_lab).mean(),
            "colourfulness": reference_colourfulness(pred),
            "colourfulness_truth": reference_colourfulness(truth),
        }
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-12), (kind, key)
        if identical:
            assert got["psnr"] == 100.0 and got["delta_e2000"] == 0.0 and got["ssim"] == pytest.approx(1.0, abs=1e-12)
    if name == "camera":
        assert prepared.colourfulness == 0.0


@pytest.mark.parametrize(("name", "shape"), FAST_PATH_CASES)
def test_8bit_fast_path_gives_the_numbers_evaluate_gave_before_it(name, shape):
    """The metrics before the fast path, on float32 k / 255 images as evaluate fed them, to 1e-12."""
    truth8 = _truth(name, shape)
    prepared = PreparedTruth(truth8)
    for kind, pred8 in _renderings(truth8).items():
        got = image_metrics_8bit(pred8, prepared)
        assert got == pytest.approx(reference_image_metrics(pred8, truth8), rel=1e-12, abs=1e-12), kind


def test_8bit_lab_lookup_is_rgb_to_lab_of_float32_values_bit_for_bit():
    r, g = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    every_value = np.stack([r, g, (7 * r + 13 * g) % 256], axis=-1).astype(np.uint8)
    lab = rgb_to_lab(_as_scored(every_value)).reshape(-1, 3).T
    np.testing.assert_array_equal(PreparedTruth(every_value).lab, lab)


@pytest.mark.parametrize("rows", [7, 22, 23, 38, 39, 70])  # 1, 16, 17, 32, 33 and 64 rows of 7×7 windows
def test_ssim_in_strips_matches_skimage_at_every_strip_boundary(rows):
    truth8 = _crop(PHOTOS["coffee"][100:], (rows, 41))
    pred8 = _renderings(truth8)["noisy"]
    want = structural_similarity(_as_scored(pred8).astype(np.float64), _as_scored(truth8).astype(np.float64),
                                 channel_axis=-1, data_range=1.0)
    assert image_metrics_8bit(pred8, PreparedTruth(truth8))["ssim"] == pytest.approx(want, rel=1e-10)
    assert ssim(pred8, truth8) == pytest.approx(
        structural_similarity(pred8 / 255.0, truth8 / 255.0, channel_axis=-1, data_range=1.0), rel=1e-10)


@pytest.mark.parametrize("shape", [(1, 5), (97, 211), (300, 300)])  # one block, three blocks, eleven bands
def test_colourfulness_in_blocks_is_the_whole_image_formula(shape):
    rng = np.random.default_rng(shape[0])
    tinted = np.clip(rng.normal([0.7, 0.45, 0.3], 0.05, (*shape, 3)), 0, 1)  # sepia-like: large mean, small spread
    for rgb in (tinted, _crop(PHOTOS["chelsea"], shape) / 255.0):
        assert colourfulness(rgb) == pytest.approx(reference_colourfulness(rgb), rel=1e-12)
    if min(shape) >= 7:
        rgb8 = (tinted * 255).round().astype(np.uint8)
        got = image_metrics_8bit(rgb8, PreparedTruth(rgb8))
        want = reference_colourfulness(_as_scored(rgb8))
        assert got["colourfulness"] == got["colourfulness_truth"] == pytest.approx(want, rel=1e-12)


def test_prepared_truth_and_8bit_metrics_refuse_other_images():
    truth8 = _crop(PHOTOS["astronaut"], (32, 32))
    with pytest.raises(ValueError, match="uint8"):
        PreparedTruth(truth8 / 255.0)
    with pytest.raises(ValueError, match="7"):
        PreparedTruth(truth8[:6])
    with pytest.raises(ValueError, match=r"of shape \(32, 32, 3\), got uint8 \(32, 31, 3\)"):
        image_metrics_8bit(truth8[:, :31], PreparedTruth(truth8))
