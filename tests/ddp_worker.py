"""Run under torchrun by test_train.py: distill on digits with one method for an epoch, then save
each rank's student and method state (and its teacher cache) to ``<out>/rank<r>.pt``. A third
argument ``views`` trains with augmentation and the teacher's view cache."""

import sys

import torch
import torch.distributed as dist

from kdscope.config import DataConfig, TrainConfig
from kdscope.data import get_augment, load_data
from kdscope.models import create_model
from kdscope.train import Trainer

method, out = sys.argv[1], sys.argv[2]
views = sys.argv[3:] == ["views"]
data = load_data("digits", train_size=200)
torch.manual_seed(0)
teacher, student = create_model("resnet14", 10, 1).eval(), create_model("resnet8", 10, 1)
trainer = Trainer(
    student,
    data.train,
    teacher=teacher,
    method=method,
    augment=get_augment("standard") if views else None,
    data=DataConfig(batch_size=25),
    train=TrainConfig(epochs=1, seed=0, cache="views" if views else "auto"),
    progress=False,
)
trainer.fit()
state = {"student": student.state_dict(), "method": trainer.method.state_dict()}
if trainer.cache is not None:
    state["cache"] = trainer.cache.logits
torch.save(state, f"{out}/rank{dist.get_rank()}.pt")
