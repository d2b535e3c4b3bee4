"""What lowbit reads of the machine before it advises on onnxruntime's int8 kernels."""

import pytest

from lowbit.deploy.runtime import x86_without_vnni


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse sse2 avx2 fma", True),  # x86 with AVX2 only: the uint8 x int8 kernel can saturate
    ("fpu sse2 avx2 avx512f avx512_vnni", False),
    ("fpu sse2 avx2 avx_vnni", False),
])
def test_x86_cpus_are_told_apart_by_vnni(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\n")
    assert x86_without_vnni(cpuinfo) is expected


def test_other_machines_get_no_advice(tmp_path):
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert not x86_without_vnni(arm)
    assert not x86_without_vnni(tmp_path / "missing")
