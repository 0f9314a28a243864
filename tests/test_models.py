"Tests of robustnb.models: shapes, channels-last, normalization inside the model, registry errors, parameter counts."
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustnb.data import dataset_info, get_data, to_float
from robustnb.models import (MODELS, LeNet5, Normalize, NormalizedModel, SmallCNN, WideResNet, get_model,
                             has_batchnorm, num_params)

ALL_NAMES = ["lenet5", "linear", "mlp", "preactresnet18", "resnet18", "resnet20", "resnet50", "smallcnn",
             "wideresnet", "wrn-28-10", "wrn-28-10-madry", "wrn-34-10"]
NO_BN = {"linear", "mlp", "smallcnn", "lenet5"}
# (in_channels, num_classes, input_size, extra kwargs) each model is checked on (the biggest on small images: CPU time)
CASES = {
    "linear": [(2, 2, None, {}), (1, 10, 28, {})],
    "mlp": [(2, 2, (), dict(hidden=(16, 16))), (3, 10, 8, dict(activation="softplus"))],
    "smallcnn": [(1, 10, 28, {}), (1, 10, 8, {}), (3, 10, 32, {})],
    "lenet5": [(1, 10, 28, {}), (1, 10, 8, {})],
    "preactresnet18": [(3, 10, 32, {})],
    "resnet18": [(3, 100, 32, {})],
    "resnet50": [(3, 10, 16, {})],
    "resnet20": [(3, 10, 32, {}), (1, 10, 8, {})],
    "wideresnet": [(3, 10, 32, dict(depth=16, widen_factor=4, dropout=0.3))],
    "wrn-28-10": [(3, 10, 8, {})],
    "wrn-28-10-madry": [(3, 10, 8, {})],
    "wrn-34-10": [(3, 10, 16, {})],
}


def _size(s):
    return () if s is None else (s, s) if isinstance(s, int) else tuple(s)


def test_registry_names():
    assert MODELS.names() == sorted(ALL_NAMES)
    assert set(CASES) == set(ALL_NAMES)


@pytest.mark.parametrize("name,c,k,size,kw", [(n, *case) for n, cases in CASES.items() for case in cases],
                         ids=lambda v: str(v))
def test_logits_shape_gradient_and_channels_last(name, c, k, size, kw):
    torch.manual_seed(0)
    model = get_model(name, in_channels=c, num_classes=k, input_size=size, mean=0.4, std=0.3, **kw).eval()
    x = torch.rand((2, c) + _size(size), requires_grad=True)
    out = model(x)
    assert out.shape == (2, k)
    assert torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out[:, 0].sum(), [x])
    assert g.abs().sum() > 0, "no gradient reaches the input of an untrained model"
    assert has_batchnorm(model) == (name not in NO_BN)
    if x.dim() == 4:
        model.to(memory_format=torch.channels_last)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
        x_cl = x.detach().to(memory_format=torch.channels_last)
        assert x_cl.stride() != x.stride()
        with torch.no_grad():
            out_cl = model(x_cl)
        torch.testing.assert_close(out_cl, out.detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,size", [("smallcnn", 28), ("lenet5", 32), ("resnet20", 32), ("mlp", 8),
                                       ("wideresnet", 32)])
def test_model_is_body_of_normalized_input(name, size):
    torch.manual_seed(1)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    kw = dict(depth=10, widen_factor=1) if name == "wideresnet" else {}
    model = get_model(name, in_channels=3, num_classes=5, input_size=size, mean=mean, std=std, **kw).eval()
    assert isinstance(model, NormalizedModel)
    x = torch.rand(3, 3, size, size)
    ref = model.body((x - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1))
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(x), model.body(x), atol=1e-3)


def test_normalize_buffers_state_dict_and_to():
    model = get_model("smallcnn", in_channels=1, num_classes=10, input_size=8, mean=0.3, std=0.4)
    sd = model.state_dict()
    assert torch.equal(sd["normalize.mean"], torch.tensor([0.3])) and torch.equal(sd["normalize.std"], torch.tensor([0.4]))
    param_ids = {id(p) for p in model.parameters()}
    assert id(model.normalize.mean) not in param_ids and id(model.normalize.std) not in param_ids
    assert model.to(torch.float64).normalize.mean.dtype == torch.float64
    assert model.to("meta").normalize.std.device.type == "meta"
    # loading a state dict replaces the statistics too
    other = get_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    other.load_state_dict(get_model("smallcnn", in_channels=1, num_classes=10, input_size=8, mean=0.3, std=0.4).state_dict())
    torch.testing.assert_close(other.normalize.std, torch.tensor([0.4]))


def test_normalize_points_and_errors():
    torch.testing.assert_close(Normalize((1.0, 3.0), (2.0, 4.0))(torch.tensor([[3.0, 3.0]])), torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize(0.0, (1.0, -1.0))
    with pytest.raises(ValueError, match="finite"):
        Normalize(float("nan"), 1.0)
    with pytest.raises(ValueError, match="2 channels"):
        Normalize((0.0, 0.0), (1.0, 1.0))(torch.rand(2, 3))


def test_config_rebuilds_model():
    torch.manual_seed(0)
    model = get_model("mlp", in_channels=2, num_classes=3, hidden=(5,), activation="tanh", mean=(0.5, 0.2), std=0.1)
    again = get_model(**model.config)
    again.load_state_dict(model.state_dict())  # strict: same keys and shapes
    x = torch.rand(4, 2)
    torch.testing.assert_close(again(x), model(x))
    assert isinstance(again.body.layers[1], nn.Tanh)


def test_dataset_argument():
    data = get_data("digits")
    m = get_model("smallcnn", dataset=data)  # a Dataset: its info is used
    assert m(to_float(data.x_test[:3])).shape == (3, 10)
    assert m.body.padding == 1
    info = dataset_info("digits")
    torch.testing.assert_close(m.normalize.mean, torch.tensor(info.mean))
    torch.testing.assert_close(m.normalize.std, torch.tensor(info.std))
    assert get_model("lenet5", dataset="digits").config == get_model("lenet5", dataset=info).config
    assert get_model("mlp", dataset="nonlinear2d")(torch.rand(4, 2)).shape == (4, 2)
    assert get_model("preactresnet18", dataset="cifar100").body.linear.out_features == 100
    info = SimpleNamespace(shape=(3, 12, 12), num_classes=6, mean=(0.2, 0.3, 0.4), std=(0.1, 0.1, 0.1))
    m = get_model("lenet5", dataset=SimpleNamespace(info=info), num_classes=3)
    assert m.config["input_size"] == (12, 12) and m.config["num_classes"] == 3
    torch.testing.assert_close(m.normalize.mean, torch.tensor([0.2, 0.3, 0.4]))


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError, match="allowed are .*resnet20.*wrn-28-10, wrn-28-10-madry, wrn-34-10"):
        get_model("vgg16", in_channels=3, num_classes=10)
    with pytest.raises(ValueError, match="num_classes must be given when no dataset"):
        get_model("resnet18", in_channels=3)
    with pytest.raises(ValueError, match="in_channels and num_classes must be given"):
        get_model("linear")
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        get_model("linear", in_channels=2, num_classes=1)
    with pytest.raises(ValueError, match="in_channels must be an integer >= 1"):
        get_model("linear", in_channels=2.5, num_classes=2)
    with pytest.raises(ValueError, match="wideresnet accepts depth, widen_factor, dropout"):
        get_model("wideresnet", in_channels=3, num_classes=10, width=3)
    with pytest.raises(ValueError, match="wrn-34-10 accepts dropout"):
        get_model("wrn-34-10", in_channels=3, num_classes=10, depth=28)
    with pytest.raises(ValueError, match="needs image inputs"):
        get_model("lenet5", in_channels=1, num_classes=10)
    with pytest.raises(ValueError, match="too small"):
        get_model("smallcnn", in_channels=1, num_classes=10, input_size=(1, 8))
    with pytest.raises(ValueError, match="mean/std have 2 values but in_channels is 1"):
        get_model("smallcnn", in_channels=1, num_classes=10, input_size=8, std=(0.5, 0.5))
    with pytest.raises(ValueError, match="depth must be 6n\\+4"):
        get_model("wideresnet", in_channels=3, num_classes=10, depth=30)
    with pytest.raises(ValueError, match="dataset must be"):
        get_model("linear", dataset=[1, 2])


PUBLISHED = {  # (name, in_channels, num_classes, input_size): published parameter count
    ("wrn-34-10", 3, 10, 32): 46.16e6, ("wrn-28-10", 3, 10, 32): 36.5e6, ("preactresnet18", 3, 10, 32): 11.17e6,
    ("resnet18", 3, 10, 32): 11.17e6, ("resnet50", 3, 10, 32): 23.5e6, ("resnet20", 3, 10, 32): 0.27e6,
    ("smallcnn", 1, 10, 28): 312_202, ("lenet5", 1, 10, 28): 61_706,
}


@pytest.mark.parametrize("spec", list(PUBLISHED), ids=lambda s: s[0])
def test_parameter_counts_match_published(spec):
    name, c, k, size = spec
    with torch.device("meta"):
        n = num_params(get_model(name, in_channels=c, num_classes=k, input_size=size))
    assert abs(n / PUBLISHED[spec] - 1) < 0.01, (name, n)


def test_wideresnet_matches_trades_layout():
    with torch.device("meta"):
        body = get_model("wrn-34-10", in_channels=3, num_classes=10).body
    keys = set(body.state_dict())
    for key in ["conv1.weight", "block1.layer.0.convShortcut.weight", "block1.layer.4.conv2.weight",
                "block3.layer.4.bn2.running_var", "bn1.weight", "fc.weight", "fc.bias"]:
        assert key in keys, key
    assert not any(k.startswith("sub_block1") for k in keys)
    assert (body.depth, body.widen_factor, body.fc.in_features) == (34, 10, 640)


def test_smallcnn_matches_trades_layout():
    net = SmallCNN()
    assert [n for n, _ in net.named_parameters()] == [
        f"feature_extractor.conv{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")] + [
        f"classifier.fc{i}.{p}" for i in range(1, 4) for p in ("weight", "bias")]
    assert net.classifier.fc1.in_features == 1024 and net.classifier.drop.p == 0.5


def test_lenet5_small_input_padding():
    assert LeNet5(1, 10, 28).padding == 0 and LeNet5(1, 10, 8).padding == 2
    assert LeNet5(1, 10, 8).feature_shape == (16, 2, 2)


def test_wideresnet_dropout_only_in_train_mode():
    torch.manual_seed(0)
    net = WideResNet(depth=10, widen_factor=1, dropout=0.5)
    x = torch.rand(2, 3, 8, 8)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.allclose(net(x), net(x))
    assert not any(F.dropout is m for m in net.modules())
