"""The package's CUDA code paths in Python, run on a simulated CUDA device (virtual_cuda: tensors
that say 'cuda:0' and compute with the CPU kernels). The oracle is the same call on the CPU:
with the same kernels underneath, every difference is the CUDA path's own doing (a tensor left
on the wrong device, a branch taken on `is_cuda`). The CUDA kernels themselves need a GPU
(test_pixel_aligned, test_narrow_band, ... run them there); where one is present, these tests
give way to them. The package's Triton kernels are not chosen here (their tests run them in
the Triton interpreter), except where a test says so: on a GPU with Triton the StyleGAN2 layers
take the Triton helpers by default, and those tests run that path, interpreted."""

import collections
import contextlib
import copy
import json

import pytest
import torch
from inputs import generator_with_a_surface, generator_with_their_conventions
from safetensors.torch import load_file
from virtual_cuda import VirtualCudaTensor, to_cpu, virtual_cuda

from get3dhuman import Generator, applications, distributed, render
from get3dhuman.authors import AuthorsColouring
from get3dhuman.benchmark import measure_sampling
from get3dhuman.cli import main
from get3dhuman.evaluate import EvaluationConfig, evaluate_generator
from get3dhuman.mesh import MeshingOptions, TexturedMesh
from get3dhuman.nn import OfficialRefiner, Reconstructor
from get3dhuman.train.reconstructor import ReconstructorTrainingConfig, StepBatches

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU runs the CUDA tests instead")


def _same_meshes(meshes, expected):
    assert len(meshes) == len(expected)
    for mesh, reference in zip(meshes, expected):
        for name in ("vertices", "faces", "colors", "normals"):
            assert torch.equal(getattr(mesh, name), getattr(reference, name)), name


# --- the simulator: what CUDA refuses, it refuses --------------------------------------------


def test_the_simulated_device_refuses_what_cuda_refuses():
    with virtual_cuda():
        on_device = torch.randn(4, 3, device="cuda")
        assert isinstance(on_device, VirtualCudaTensor) and on_device.is_cuda and on_device.device.type == "cuda"
        with pytest.raises(RuntimeError, match="same device"):
            on_device + torch.ones(4, 3)
        assert (on_device + torch.tensor(2.0)).is_cuda  # a CPU scalar tensor is allowed, as in CUDA
        assert on_device[torch.tensor([0, 2])].is_cuda  # CPU indices too, not device indices of a CPU tensor
        with pytest.raises(RuntimeError, match="indices"):
            torch.ones(4)[torch.tensor([0, 2], device="cuda")]
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(3, device="cuda", generator=torch.Generator().manual_seed(0))
        with pytest.raises(TypeError, match="numpy"):
            on_device.numpy()
        on_host = on_device.cpu()
        assert type(on_host) is torch.Tensor and on_host.device.type == "cpu"
        assert torch.equal(on_host.cuda().cpu(), on_host) and on_device.tolist() == on_host.tolist()


def test_modules_train_on_the_simulated_device():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 1))
    reference = copy.deepcopy(network)
    images = torch.randn(2, 3, 4, 4)
    with virtual_cuda() as traffic:
        network.cuda()
        assert all(isinstance(parameter, VirtualCudaTensor) for parameter in network.parameters())
        optimizer = torch.optim.Adam(network.parameters())
        network(images.cuda()).square().mean().backward()
        # Convolution's backward makes its weight gradient with new_empty_strided: on the device too.
        assert all(isinstance(parameter.grad, VirtualCudaTensor) for parameter in network.parameters())
        optimizer.step()
        trained = [parameter.cpu() for parameter in network.parameters()]
    assert traffic.host_reads == len(trained)
    optimizer = torch.optim.Adam(reference.parameters())
    reference(images).square().mean().backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(trained, reference.parameters()))


# --- the package on the simulated device -----------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampling_on_cuda_gives_the_cpus_meshes(dtype):
    expected = Generator.from_pretrained(dtype=dtype).sample(2, seed=5, resolution=64, batch_size=2)
    with virtual_cuda():
        generator = Generator.from_pretrained(device="cuda", dtype=dtype)
        meshes = generator.sample(2, seed=5, resolution=64, batch_size=2)
        assert all(mesh.vertices.is_cuda and mesh.colors.is_cuda for mesh in meshes)
        meshes = [mesh.to("cpu") for mesh in meshes]
    _same_meshes(meshes, expected)


def test_bfloat16_products_on_cuda_give_the_cpus_meshes():
    generator = Generator.from_pretrained()
    z = generator.latents([7])
    narrow = MeshingOptions(compute_dtype=torch.bfloat16)
    expected = generator.extract_mesh(*z, 64, meshing=narrow)
    with virtual_cuda():
        generator.cuda()
        meshes = [mesh.to("cpu") for mesh in generator.extract_mesh(*(t.cuda() for t in z), 64, meshing=narrow)]
    _same_meshes(meshes, expected)


def test_sampling_on_cuda_waits_for_the_device_a_few_times_per_level():
    """A GPU run stalls at each read of a device value (`.item()`, `.cpu()`, a mask's size). The
    narrow band needs a few per refinement level and closure step (sizes of the next tensors);
    reads per cell corner (as there were, 16 per closure step) are caught here. Nothing sizeable
    is computed on the CPU meanwhile (the latents are drawn there, 2 x 512 numbers a human)."""
    generator = Generator.from_pretrained()
    with virtual_cuda() as traffic:
        generator.cuda()  # host-to-device copies, which wait for nothing
        generator.sample(1, seed=2, resolution=256)
    assert traffic.synchronisations <= 30, traffic.sites.most_common()
    assert max(traffic.host_elements.values()) <= 2048, traffic.host_elements.most_common(5)


@pytest.fixture
def triton_launches(monkeypatch):
    """Counts the launches of the Triton StyleGAN2 helpers by name."""
    from get3dhuman.kernels import stylegan2 as kernels

    launches = collections.Counter()

    def counted(name, kernel):
        def launch(*args, **kwargs):
            launches[name] += 1
            return kernel(*args, **kwargs)

        return launch

    for name in ("bias_act", "modulate"):
        monkeypatch.setattr(kernels, name, counted(name, getattr(kernels, name)))
    return launches


def test_the_triton_helpers_chosen_on_cuda_give_the_cpus_volumes_and_meshes(triton_launches):
    """What a GPU with Triton runs by default: every StyleGAN2 layer through the Triton helpers
    (here interpreted), the queries through the 'cuda' backend. Triton rounds otherwise than
    torch: the volumes agree to 1e-5. A vertex's position divides such a difference by its edge's
    change of occupancy, unbounded near a flat edge, so the mesh is checked against the CPU's
    mesh of the CUDA path's own volumes: the same bits."""
    generator = generator_with_a_surface().eval()
    z = generator.latents([3])
    with torch.no_grad():
        shape, texture = generator(*z)
    with virtual_cuda(triton=True):
        generator.cuda()
        with torch.no_grad():
            shape_cuda, texture_cuda = generator(*(t.cuda() for t in z))
        assert triton_launches["bias_act"] > 0 and triton_launches["modulate"] > 0
        mesh = generator.extract_mesh(*(t.cuda() for t in z), 32)[0].to("cpu")
        shape_cuda, texture_cuda = to_cpu((shape_cuda.volume, texture_cuda))
        generator.cpu()
    torch.testing.assert_close(shape_cuda, shape.volume, rtol=0, atol=1e-5)
    torch.testing.assert_close(texture_cuda, texture, rtol=0, atol=1e-5)
    expected = generator.meshes_from_volumes(shape_cuda, texture_cuda, 32)[0]
    assert mesh.faces.shape[0] > 0
    _same_meshes([mesh], [expected])


@pytest.mark.slow
def test_generator_training_through_the_triton_helpers_on_cuda_gives_the_cpus_losses(tmp_path, triton_launches):
    """Stage 3 as a GPU with Triton runs it: the StyleGAN2 layers' forward, backward and R1 (a
    gradient of a gradient through bias_act) in the Triton helpers; the CPU's losses up to
    rounding."""
    common = ["--preset", "tiny", "--quiet"]
    runs = {name: str(tmp_path / name) for name in ("reconstructor", "prior", "cpu", "cuda")}
    assert main(["train", "reconstructor", "--steps", "2", "--workers", "0", "--out", runs["reconstructor"],
                 *common]) == 0
    assert main(["train", "prior", "--reconstructor", runs["reconstructor"], "--out", runs["prior"], *common]) == 0
    for device in ("cpu", "cuda"):
        with virtual_cuda(triton=True) if device == "cuda" else contextlib.nullcontext():
            # One step: it has R1 (lazy, every 16 steps from the first) and the interpreter is slow.
            assert main(["train", "generator", "--steps", "1", "--prior", runs["prior"], "--reconstructor",
                         runs["reconstructor"], "--out", runs[device], "--device", device, *common]) == 0
    assert triton_launches["bias_act"] > 0 and triton_launches["modulate"] > 0
    metrics = [[json.loads(line) for line in (tmp_path / device / "metrics.jsonl").read_text().splitlines()]
               for device in ("cpu", "cuda")]
    assert "r1" in metrics[1][0]
    for cpu, cuda in zip(*metrics, strict=True):
        assert cpu.keys() == cuda.keys()
        for key in cpu:
            if not key.startswith("seconds"):
                assert cuda[key] == pytest.approx(cpu[key], rel=1e-4, abs=1e-6), key


def test_the_authors_colouring_on_cuda_gives_the_cpus_meshes():
    """Their two views traced, refined and lifted on the device: the CPU's bits."""
    generator = generator_with_their_conventions()
    torch.manual_seed(1)
    refiner = OfficialRefiner().eval()
    z = generator.latents([0, 1])
    expected = generator.extract_mesh(*z, 32, recolor=AuthorsColouring(refiner))
    with virtual_cuda():
        generator.cuda()
        refiner.cuda()
        meshes = [mesh.to("cpu") for mesh in generator.extract_mesh(*(t.cuda() for t in z), 32,
                                                                  recolor=AuthorsColouring(refiner))]
        generator.cpu()
    assert all(not mesh.is_empty for mesh in meshes)
    _same_meshes(meshes, expected)


def test_textured_meshes_on_cuda_are_the_cpus():
    """Decimation, the atlas and the bake on the device, with the texture decoder's colours and
    with the authors' colouring of the texels: the CPU's bits."""
    meshing = MeshingOptions(faces=1500, texture_size=128)
    for generator, recolor in ((Generator.from_pretrained(), None),
                               (generator_with_their_conventions(), AuthorsColouring())):
        z = generator.latents([7])
        expected = generator.extract_mesh(*z, 48, meshing=meshing, recolor=recolor)
        with virtual_cuda():
            generator.cuda()
            meshes = [mesh.to("cpu") for mesh in generator.extract_mesh(*(t.cuda() for t in z), 48, meshing=meshing,
                                                                      recolor=recolor)]
            generator.cpu()
        assert not meshes[0].is_empty and meshes[0].texture.shape == (128, 128, 3)
        _same_meshes(meshes, expected)
        assert torch.equal(meshes[0].uvs, expected[0].uvs) and torch.equal(meshes[0].texture, expected[0].texture)


def test_the_command_line_writes_the_same_dataset_on_cuda(tmp_path):
    argv = ["sample", "--num", "2", "--resolution", "48", "--preview", "32", "--views", "2", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "cpu")]) == 0
    with virtual_cuda():
        assert main([*argv, "--out", str(tmp_path / "cuda"), "--device", "cuda"]) == 0
    for index in range(2):
        _same_meshes([TexturedMesh.load(tmp_path / "cuda" / f"human-{index}.glb")],
                     [TexturedMesh.load(tmp_path / "cpu" / f"human-{index}.glb")])
        preview = f"human-{index}.png"
        assert (tmp_path / "cuda" / preview).read_bytes() == (tmp_path / "cpu" / preview).read_bytes()
    records = [[json.loads(line) for line in (tmp_path / run / "manifest.jsonl").read_text().splitlines()]
               for run in ("cpu", "cuda")]
    assert [(r["seed"], r["vertices"], r["faces"]) for r in records[0]] == \
        [(r["seed"], r["vertices"], r["faces"]) for r in records[1]]


def test_the_benchmark_runs_on_cuda():
    with virtual_cuda():
        result = measure_sampling(Generator.from_pretrained(device="cuda"), num=1, resolution=32, repeat=1)
    assert result.device.startswith("cuda") and result.faces > 0 and result.seconds_per_human > 0


def test_applications_on_cuda_match_the_cpu():
    """Retexturing, and inversion: Adam through the networks, the decoders' backward (the 'cuda'
    query backend's) and the ray-marched render."""
    generator = Generator.from_pretrained()
    z_shape, z_texture = generator.latents([3, 4])
    expected = applications.retexture(generator, z_shape[:1], z_texture, resolution=48)
    image = render.render_meshes(expected[:1], generator.calibration[None], 24).color
    inversion_options = {"steps": 2, "depth_samples": 16, "march_samples": 16, "seed": 5}
    expected_inversion = applications.invert(generator, image[0], **inversion_options)
    with virtual_cuda():
        generator.cuda()
        meshes = [mesh.to("cpu") for mesh in applications.retexture(generator, z_shape[:1].cuda(), z_texture.cuda(),
                                                                      resolution=48)]
        inversion = applications.invert(generator, image[0].cuda(), **inversion_options)
        inverted = to_cpu((inversion.z_shape, inversion.z_texture))
    _same_meshes(meshes, expected)
    assert inversion.losses == expected_inversion.losses
    assert torch.equal(inverted[0], expected_inversion.z_shape)
    assert torch.equal(inverted[1], expected_inversion.z_texture)


def test_evaluation_on_cuda_gives_the_cpus_metrics():
    config = EvaluationConfig(samples=3, references=3, points=256, resolution=32)
    expected = evaluate_generator(Generator.from_pretrained(), config)
    with virtual_cuda():
        assert evaluate_generator(Generator.from_pretrained(device="cuda"), config) == expected


def test_reconstructor_batches_made_on_cuda_are_the_cpus():
    """Stage 1 makes its batches on the GPU when it trains there (no workers): the same humans,
    cameras, draws and samples, bit for bit with the same kernels."""
    config = ReconstructorTrainingConfig(preset="tiny", batch_size=2, occupancy_points=512, color_points=256)
    expected = StepBatches(config, 32, distributed.world(), "cpu")[3]
    with virtual_cuda():
        batch = StepBatches(config, 32, distributed.world(), "cuda")[3]
        assert all(value.is_cuda for value in batch.values())
        batch = to_cpu(batch)
    assert batch.keys() == expected.keys()
    assert all(torch.equal(batch[key], expected[key]) for key in expected)


def test_reconstruction_and_mesh_renders_on_cuda_match_the_cpu():
    torch.manual_seed(0)
    model = Reconstructor("tiny").eval()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # untrained, its occupancy is near its median everywhere: make that the level
        points = torch.rand(1, 4096, 3) * 2 - 1
        occupancy = model.query_occupancy(model(image)[0], points, model.calibration[None])
        model.mlp_shape.filters[-1].bias -= torch.logit(occupancy.median())
    expected = model.extract_mesh(image, resolution=32)
    assert expected[0].faces.shape[0] > 100
    calib = render.orbit_calibration(torch.tensor([0.0, 90.0]))
    expected_views = render.render_meshes(expected * 2, calib, 24)
    with virtual_cuda():
        model.cuda()
        meshes = model.extract_mesh(image.cuda(), resolution=32)
        views = to_cpu(render.render_meshes(meshes * 2, calib.cuda(), 24))
        meshes = [mesh.to("cpu") for mesh in meshes]
    _same_meshes(meshes, expected)
    assert all(torch.equal(a, b) for a, b in zip(views, expected_views))


@pytest.mark.slow
def test_every_training_stage_runs_on_cuda_as_on_the_cpu(tmp_path):
    """Two steps of each stage of the tiny preset on each device: the same losses, checkpoints
    and prior shards; then the same meshes coloured by the trained refiner."""

    def stages(out, device):
        common = ["--preset", "tiny", "--device", device, "--quiet"]
        runs = {name: str(out / name) for name in ("reconstructor", "prior", "generator", "refiner")}
        assert main(["train", "reconstructor", "--steps", "2", "--workers", "0", "--out", runs["reconstructor"],
                     *common]) == 0
        assert main(["train", "prior", "--reconstructor", runs["reconstructor"], "--out", runs["prior"], *common]) == 0
        assert main(["train", "generator", "--steps", "2", "--prior", runs["prior"], "--reconstructor",
                     runs["reconstructor"], "--out", runs["generator"], *common]) == 0
        assert main(["train", "refiner", "--steps", "2", "--prior", runs["prior"], "--generator", runs["generator"],
                     "--out", runs["refiner"], *common]) == 0

    stages(tmp_path / "cpu", "cpu")
    with virtual_cuda():
        stages(tmp_path / "cuda", "cuda")
    for stage in ("reconstructor", "generator", "refiner"):
        metrics = [[json.loads(line) for line in (tmp_path / device / stage / "metrics.jsonl").read_text().splitlines()]
                   for device in ("cpu", "cuda")]
        losses = [[{k: v for k, v in record.items() if not k.startswith("seconds")} for record in run]
                  for run in metrics]
        assert losses[0] == losses[1], stage
    for path in ("reconstructor/checkpoint-00000002", "prior/prior-00000", "generator/checkpoint-00000002",
                 "refiner/checkpoint-00000002"):
        saved = [load_file(tmp_path / device / f"{path}.safetensors") for device in ("cpu", "cuda")]
        assert saved[0].keys() == saved[1].keys() and all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
    # The trained refiner's colours (front and back views back-projected onto the meshes).
    argv = ["sample", "--preset", "tiny", "--num", "2", "--resolution", "32", "--quiet"]
    for device in ("cpu", "cuda"):
        run = tmp_path / device
        with virtual_cuda() if device == "cuda" else contextlib.nullcontext():
            assert main([*argv, "--generator", str(run / "generator"), "--refiner", str(run / "refiner"),
                         "--device", device, "--out", str(run / "samples")]) == 0
    files = [sorted(path.name for path in (tmp_path / device / "samples").glob("*.glb")) for device in ("cpu", "cuda")]
    assert files[0] == files[1] and files[0]  # an empty mesh writes no file
    for name in files[0]:
        _same_meshes(*([TexturedMesh.load(tmp_path / device / "samples" / name)] for device in ("cpu", "cuda")))
