"""torch.export with a dynamic batch, height and width: the chunked scan and the exported networks."""

from __future__ import annotations

import pytest
import torch

from medmamba.networks import (
    MOBILEMAMBA_VARIANTS,
    LesionMapClassifier,
    MeanEnsemble,
    MobileMamba,
    MobileMambaSeg,
    export_dynamic,
    fuse_norms,
    selective_scan,
    selective_scan_chunked,
    spatial_multiple,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


def _scan_inputs(batch: int, groups: int, dm: int, n_state: int, length: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    kd = groups * dm
    f64 = {"dtype": torch.float64, "generator": g}
    return (
        torch.randn(batch, kd, length, **f64),
        torch.randn(batch, kd, length, **f64),
        -3 * torch.rand(kd, n_state, **f64),
        torch.randn(batch, groups, n_state, length, **f64),
        torch.randn(batch, groups, n_state, length, **f64),
        torch.randn(kd, **f64),
        torch.randn(kd, **f64),
    )


@pytest.mark.parametrize("length", [1, 7, 8, 9, 49, 196])
@pytest.mark.parametrize("chunk", [1, 4, 8, 64])
def test_chunked_scan_equals_the_sequential_reference(length: int, chunk: int) -> None:
    u, delta, A, B, C, D, bias = _scan_inputs(2, 2, 3, 2, length)
    ref = selective_scan(u, delta, A, B, C, D, bias, True, backend="reference")
    out = selective_scan_chunked(u, delta, A, B, C, D, bias, True, chunk=chunk)
    assert out.shape == ref.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    plain = selective_scan_chunked(u, delta, A, B, C, None, None, False, chunk=chunk)
    torch.testing.assert_close(plain, selective_scan(u, delta, A, B, C, None, None, False, backend="reference"),
                               rtol=1e-10, atol=1e-10)


def test_chunked_scan_stays_finite_with_strong_decay() -> None:
    u, delta, A, B, C, D, bias = _scan_inputs(1, 2, 2, 1, 100)
    A = A * 1000  # decays of exp(-1000 dt): products underflow, differences of cumulative sums do not overflow
    out = selective_scan_chunked(u, delta, A, B, C, D, bias, True, chunk=8)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, selective_scan(u, delta, A, B, C, D, bias, True, backend="reference"),
                               rtol=1e-8, atol=1e-10)


def test_chunk_must_be_a_positive_integer() -> None:
    u, delta, A, B, C, D, bias = _scan_inputs(1, 2, 2, 1, 5)
    with pytest.raises(ValueError, match="chunk must be a positive integer, got 0"):
        selective_scan_chunked(u, delta, A, B, C, chunk=0)


def _perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """Fused, in eval mode, with weights moved off their initial values (so every branch contributes)."""
    net = fuse_norms(net.eval())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def _check(net: torch.nn.Module, program: torch.export.ExportedProgram, shapes: list[tuple[int, ...]]) -> None:
    run = program.module()
    for shape in shapes:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            ref, out = net(x), run(x)
        assert out.shape == ref.shape
        assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4, shape


def test_mobilemamba_exports_with_dynamic_batch_and_size() -> None:
    net = _perturbed(MobileMamba("t2", in_channels=1, num_classes=3))
    assert spatial_multiple(net) == 32
    program = export_dynamic(net, torch.randn(2, 1, 224, 256))
    # batch 1, 3 and 8; square and oblong sizes; maps whose scan length is and is not a multiple of the chunk
    _check(net, program, [(1, 1, 224, 256), (3, 1, 192, 192), (8, 1, 128, 160), (1, 1, 320, 128)])
    # the scan in the graph is the chunked one (cumulative sums), not a Python loop unrolled for one length
    assert any("cumsum" in str(n.target) for n in program.graph.nodes)


@pytest.mark.slow
def test_segmentation_and_lesion_map_networks_export_with_dynamic_batch_and_size() -> None:
    seg = _perturbed(MobileMambaSeg("t2", in_channels=3, out_channels=4, output_stride=1))
    assert spatial_multiple(seg) == 64
    _check(seg, export_dynamic(seg, torch.randn(2, 3, 256, 320)), [(1, 3, 128, 128), (3, 3, 256, 128), (8, 3, 192, 192)])
    clf = _perturbed(LesionMapClassifier(MobileMambaSeg("t2", in_channels=5, out_channels=5, output_stride=2),
                                         lesion_channel=4))
    _check(clf, export_dynamic(clf, torch.randn(2, 5, 256, 320)), [(1, 5, 128, 192), (3, 5, 256, 256), (8, 5, 128, 128)])


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(MOBILEMAMBA_VARIANTS))
def test_every_variant_exports_with_dynamic_batch_and_size(variant: str) -> None:
    """All six variants, fused; about 25-40 s each on 2 cores."""
    net = _perturbed(MobileMamba(variant, in_channels=1, num_classes=3))
    program = export_dynamic(net, torch.randn(2, 1, 160, 192))
    _check(net, program, [(1, 1, 128, 128), (3, 1, 224, 160), (8, 1, 128, 256)])


@pytest.mark.slow
def test_unfused_network_and_seed_ensemble_export_with_dynamic_batch_and_size() -> None:
    torch.manual_seed(0)
    unfused = MobileMamba("t2", in_channels=1, num_classes=3).eval()  # BatchNorms kept (eval statistics)
    _check(unfused, export_dynamic(unfused, torch.randn(2, 1, 160, 160)), [(1, 1, 128, 192), (8, 1, 224, 224)])
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(_perturbed(LesionMapClassifier(
            MobileMambaSeg("t2", in_channels=5, out_channels=5, output_stride=2, embed_dim=(32, 48, 64), depth=(1, 1, 1)),
            lesion_channel=4,
        )))
    ensemble = MeanEnsemble(members).eval()
    assert spatial_multiple(ensemble) == 64
    _check(ensemble, export_dynamic(ensemble, torch.randn(2, 5, 128, 192)), [(1, 5, 128, 128), (3, 5, 256, 192)])


def test_export_arguments_are_checked() -> None:
    net = MobileMamba("t2", in_channels=1, num_classes=3)
    with pytest.raises(ValueError, match="training mode"):
        export_dynamic(net, torch.randn(2, 1, 128, 128))
    net.eval()
    with pytest.raises(ValueError, match="batch must be between 2"):
        export_dynamic(net, torch.randn(1, 1, 128, 128))
    with pytest.raises(ValueError, match="height must be a multiple of 32 between 128"):
        export_dynamic(net, torch.randn(2, 1, 100, 128))
    seg = MobileMambaSeg("t2", in_channels=1, out_channels=2).eval()
    with pytest.raises(ValueError, match="width must be a multiple of 64"):
        export_dynamic(seg, torch.randn(2, 1, 128, 160))


@pytest.mark.slow
def test_default_onnx_exporter_graph_runs_at_any_batch_and_size(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from medmamba.networks import export_onnx_dynamic

    net = _perturbed(MobileMamba("t2", in_channels=1, num_classes=3))
    path = export_onnx_dynamic(net, torch.randn(2, 1, 224, 256), tmp_path / "t2.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 192, 192), (3, 1, 256, 128), (8, 1, 128, 160), (8, 1, 224, 224)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            ref = net(x).numpy()
        out = session.run(None, {"x": x.numpy()})[0]
        assert out.shape == ref.shape
        assert float(abs(out - ref).max() / abs(ref).max()) < 1e-4, shape


def test_compile_ahead_of_time_refuses_what_it_cannot_compile(tmp_path) -> None:
    from medmamba.networks import compile_ahead_of_time, load_compiled

    net = MobileMamba("t2", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="training mode"):
        compile_ahead_of_time(net, torch.randn(2, 1, 128, 128), tmp_path / "a.pt2")
    with pytest.raises(ValueError, match=r"2 <= batch.*got shape \(1, 1, 128, 128\)"):
        compile_ahead_of_time(net.eval(), torch.randn(1, 1, 128, 128), tmp_path / "a.pt2")
    with pytest.raises(ValueError, match="path must be a .pt2 file"):
        load_compiled(tmp_path / "missing.pt2")


@pytest.mark.slow
def test_compiled_artefact_equals_eager_at_any_batch_and_runs_without_the_model_code(tmp_path) -> None:
    import subprocess
    import sys

    from medmamba.training import export_fused

    torch.manual_seed(0)
    net = MobileMamba("t2", in_channels=1, num_classes=3, embed_dim=(32, 48, 64), depth=(1, 1, 1)).eval()
    result = export_fused(net, sample_input=torch.randn(2, 1, 128, 128), out_dir=tmp_path, name="tiny",
                          formats=("compiled",))
    assert result.compiled_path == str(tmp_path / "tiny_fused.pt2")
    assert set(result.max_abs_error) == {"fusion", "compiled", "compiled@batch=3"}
    # a fresh interpreter with torch only: the artefact needs none of the project's Python code
    x = torch.randn(5, 1, 128, 128, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        f"m = torch._inductor.aoti_load_package({result.compiled_path!r})\n"
        f"y = m(torch.load({str(tmp_path / 'x.pt')!r}))\n"
        "assert not any(k.startswith('medmamba') for k in sys.modules)\n"
        f"torch.save(y, {str(tmp_path / 'y.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=300)
    from medmamba.networks import fuse_norms as fuse

    with torch.no_grad():
        ref = fuse(net)(x)
    got = torch.load(tmp_path / "y.pt")
    assert got.shape == (5, 3)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-3)
