import pytest
import torch

from tailsynth.errors import TailsynthError
from tailsynth.runtime import resolve_device, resolve_dtype

HAS_CUDA = torch.cuda.is_available()


def test_auto_device_is_cuda_when_present_else_cpu():
    assert resolve_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("value", "fragment"), [("banana", "not a device"), ("meta", "not supported")])
def test_unknown_devices_name_the_param(value, fragment):
    with pytest.raises(TailsynthError, match=rf"runtime.device {value!r} .*{fragment}"):
        resolve_device(value)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("value", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_names_the_param(value):
    with pytest.raises(TailsynthError, match=r"runtime.device is .* no CUDA device is visible"):
        resolve_device(value)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_a_gpu_index_past_the_last_names_the_param():
    with pytest.raises(TailsynthError, match="runtime.device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(
    ("value", "device", "dtype"),
    [
        ("auto", "cpu", torch.float32),
        ("auto", "cuda", torch.float16),  # decided from the device alone: no GPU needed to check it
        ("fp32", "cuda", torch.float32),
        ("fp16", "cuda", torch.float16),
        ("fp32", "cpu", torch.float32),
        ("bf16", "cpu", torch.bfloat16),
    ],
)
def test_dtypes(value, device, dtype):
    assert resolve_dtype(value, device) is dtype


def test_fp16_on_the_cpu_and_unknown_dtypes_name_the_param():
    with pytest.raises(TailsynthError, match="runtime.dtype fp16 is not supported on the CPU"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(TailsynthError, match="runtime.dtype 'fp64' is not one of auto, fp32, fp16, bf16"):
        resolve_dtype("fp64", "cpu")
