"""Run under torchrun by test_train.py: distill on digits with one method for an epoch, then save
each rank's student and method state to ``<out>/rank<r>.pt``."""

import sys

import torch
import torch.distributed as dist

from kdscope.config import DataConfig, TrainConfig
from kdscope.data import load_data
from kdscope.models import create_model
from kdscope.train import Trainer

method, out = sys.argv[1], sys.argv[2]
data = load_data("digits", train_size=200)
torch.manual_seed(0)
teacher, student = create_model("resnet14", 10, 1).eval(), create_model("resnet8", 10, 1)
trainer = Trainer(
    student,
    data.train,
    teacher=teacher,
    method=method,
    data=DataConfig(batch_size=25),
    train=TrainConfig(epochs=1, seed=0),
    progress=False,
)
trainer.fit()
state = {"student": student.state_dict(), "method": trainer.method.state_dict()}
torch.save(state, f"{out}/rank{dist.get_rank()}.pt")
