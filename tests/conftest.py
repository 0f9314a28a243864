"""Shared pytest settings and fixtures."""
import pytest
import torch
import torch.nn.functional as F

from robustnb.core import set_seed
from robustnb.data import get_data, to_float
from robustnb.evaluate import accuracy
from robustnb.models import get_model


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    "The test models are tiny: one torch thread is as fast, and far faster when test processes share the cores."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def trained(one_thread):
    "An ordinary SmallCNN trained on digits for a few seconds (plain cross-entropy), and 100 test examples."
    set_seed(0)
    data = get_data("digits")
    net = get_model("smallcnn", dataset="digits")
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    xtr, ytr = to_float(data.x_train), data.y_train
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        for idx in torch.randperm(len(xtr), generator=g).split(128):
            opt.zero_grad()
            F.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
    net.eval()
    assert accuracy(net, data.x_test, data.y_test) > 0.9
    return net, data.x_test[:100], data.y_test[:100]
