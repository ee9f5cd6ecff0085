"""Datasets: digits, image folders (and their errors), VAE latents, batch iteration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nas.config import DataConfig
from nas.data import dataset_id, encode_latents, infinite_batches, load_dataset
from nas.errors import UserError


def test_digits_shape_and_range():
    x = load_dataset(DataConfig(dataset="digits", image_size=16))
    assert x.shape == (1797, 1, 16, 16)
    assert x.dtype == torch.float32
    assert x.min().item() == pytest.approx(-1.0, abs=1e-6)
    assert 0.9 < x.max().item() <= 1.0
    # not blank: digits have ink and background
    assert 0.1 < (x > 0).float().mean().item() < 0.6


def test_digits_limit_and_size():
    x = load_dataset(DataConfig(image_size=8, limit=5))
    assert x.shape == (5, 1, 8, 8)
    from sklearn.datasets import load_digits

    expected = torch.tensor(load_digits().images[:5], dtype=torch.float32) / 8.0 - 1.0
    assert torch.allclose(x[:, 0], expected, atol=1e-6)


def _write_images(folder, sizes):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ext = ["png", "jpg", "bmp"][i % 3]
        sub = folder / ("nested" if i % 2 else "")
        sub.mkdir(exist_ok=True)
        path = sub / f"img{i}.{ext}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def test_folder_of_images_recursive_crop_and_resize(tmp_path):
    _write_images(tmp_path / "imgs", [(40, 30), (20, 50), (32, 32), (64, 16)])
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    x = load_dataset(DataConfig(dataset="folder", path=str(tmp_path / "imgs"), image_size=12))
    assert x.shape == (4, 3, 12, 12)
    assert x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    y = load_dataset(DataConfig(dataset="folder", path=str(tmp_path / "imgs"), image_size=12, center_crop=False))
    assert y.shape == (4, 3, 12, 12)
    assert not torch.allclose(x, y)  # cropping vs squashing differ on non-square images
    z = load_dataset(DataConfig(dataset="folder", path=str(tmp_path / "imgs"), image_size=12, limit=2))
    assert torch.equal(z, x[:2])


def test_folder_pixel_values_map_to_minus_one_one(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "black.png")
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(folder / "white.png")
    x = load_dataset(DataConfig(dataset="folder", path=str(folder), image_size=8))
    assert torch.allclose(x[0], torch.full_like(x[0], -1.0))  # sorted: black.png first
    assert torch.allclose(x[1], torch.full_like(x[1], 1.0))


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist.*data.path"):
        load_dataset(DataConfig(dataset="folder", path=str(tmp_path / "missing")))


def test_file_instead_of_folder_is_a_user_error(tmp_path):
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset(DataConfig(dataset="folder", path=str(f)))


def test_empty_folder_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(UserError, match="holds no images"):
        load_dataset(DataConfig(dataset="folder", path=str(tmp_path / "empty")))


def test_unreadable_images_are_named(tmp_path):
    _write_images(tmp_path / "imgs", [(16, 16)])
    (tmp_path / "imgs" / "broken.png").write_bytes(b"this is not a png")
    (tmp_path / "imgs" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    with pytest.raises(UserError) as err:
        load_dataset(DataConfig(dataset="folder", path=str(tmp_path / "imgs"), image_size=8))
    message = str(err.value)
    assert "2 of 3 image files" in message
    assert "broken.png" in message and "truncated.jpg" in message
    assert "img0.png" not in message


def test_dataset_id_is_stable_and_distinguishes_settings(tmp_path):
    a = DataConfig(dataset="folder", path=str(tmp_path), image_size=16)
    b = DataConfig(dataset="folder", path=str(tmp_path), image_size=32)
    assert dataset_id(a) == dataset_id(DataConfig(dataset="folder", path=str(tmp_path), image_size=16))
    assert dataset_id(a) != dataset_id(b)
    assert dataset_id(DataConfig()) != dataset_id(DataConfig(limit=10))


def _tiny_kl():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
    )


def test_encode_latents_autoencoder_kl():
    vae = _tiny_kl()
    images = torch.rand(5, 3, 16, 16) * 2 - 1
    z = encode_latents(images, vae, batch_size=2, device="cpu")
    assert z.shape == (5, 4, 8, 8)
    assert z.dtype == torch.float32
    with torch.no_grad():
        ref = vae.encode(images[:1]).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(z[:1], ref, atol=1e-5)  # batching does not change the result


def test_encode_latents_vq_model():
    from diffusers import VQModel

    torch.manual_seed(0)
    vq = VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        layers_per_block=1, latent_channels=3, norm_num_groups=4, num_vq_embeddings=16, vq_embed_dim=3,
        sample_size=16, scaling_factor=0.5,
    )
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    z = encode_latents(images, vq, batch_size=8)
    assert z.shape == (3, 3, 8, 8)
    with torch.no_grad():
        ref = vq.encode(images).latents * 0.5
    assert torch.allclose(z, ref, atol=1e-5)


def test_encode_latents_channel_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="3-channel"):
        encode_latents(torch.zeros(2, 1, 16, 16), _tiny_kl(), batch_size=2)


def test_infinite_batches_bounded_and_covering():
    images = torch.arange(10.0).view(10, 1)
    g = torch.Generator().manual_seed(0)
    batches = list(infinite_batches(images, 4, g, steps=5))
    assert len(batches) == 5
    assert all(b.shape == (4, 1) for b in batches)
    first_pass = torch.cat(batches)[:8].flatten().tolist()
    assert len(set(first_pass)) == 8  # no repeats inside one pass
    # seeded: same generator seed gives the same batches
    again = list(infinite_batches(images, 4, torch.Generator().manual_seed(0), steps=5))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


def test_infinite_batches_batch_larger_than_data():
    images = torch.arange(3.0).view(3, 1)
    batches = list(infinite_batches(images, 7, torch.Generator().manual_seed(1), steps=2))
    assert [b.shape[0] for b in batches] == [7, 7]
    assert sorted(set(batches[0].flatten().tolist())) == [0.0, 1.0, 2.0]
    assert list(infinite_batches(images, 2, None, steps=0)) == []
