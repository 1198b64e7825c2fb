"""Run under torchrun by test_audio_text_reliability.py: KD with the teacher cache for an epoch on
small real subsets of FSDD and of SST-2 (``<out> fsdd=<data_dir> sst2=<data_dir>``; one launch for
both, as starting processes is most of the cost), then save each rank's student and teacher cache
to ``<out>/<dataset>-rank<r>.pt``."""

import sys

import torch
import torch.distributed as dist

from kdscope.config import DataConfig, TrainConfig
from kdscope.data import load_data
from kdscope.models import create_model
from kdscope.train import Trainer

out = sys.argv[1]
for arg in sys.argv[2:]:
    name, data_dir = arg.split("=", 1)
    data = load_data(name, data_dir=data_dir, train_size=40)
    torch.manual_seed(0)
    if name == "fsdd":
        teacher, student = create_model("resnet8", 10, 1), create_model("resnet8", 10, 1)
    else:
        vocab = data.in_channels
        teacher = create_model("textcnn", 2, vocab, embed_dim=16, filters=8)
        student = create_model("bilstm", 2, vocab, embed_dim=16, hidden_size=8, mlp_size=8)
    trainer = Trainer(
        student,
        data.train,
        teacher=teacher.eval(),
        method="kd",
        data=DataConfig(batch_size=10),
        train=TrainConfig(epochs=1, seed=0, device="cpu"),
        progress=False,
    )
    trainer.fit()
    state = {"student": student.state_dict(), "cache": trainer.cache.logits}
    torch.save(state, f"{out}/{name}-rank{dist.get_rank()}.pt")
