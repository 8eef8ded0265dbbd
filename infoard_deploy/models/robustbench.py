"""RobustBench model-zoo names -> registered architecture, normalisation and download id.

Transcribed from RobustBench ``robustbench/model_zoo/cifar10.py`` and ``cifar100.py`` (the ``linf``, ``l2``
and ``common_corruptions`` tables): only entries whose architecture is registered here (TRADES-layout and
DM-layout WideResNets, ResNet-18, both PreAct-ResNet-18 variants). Normalisation is what the RobustBench
model class does to its [0,1] input, since most checkpoint files do not hold it:

* ``raw``: nothing (plain ``WideResNet`` / ``ResNet18`` / ``PreActResNet`` entries),
* ``2x-1``: ``Hendrycks2019UsingNet`` computes ``2x - 1`` (mean 0.5 / std 0.5),
* ``dm``: ``DMWideResNet(mean=CIFAR10_MEAN / CIFAR100_MEAN, ...)``; the values live in attributes or
  non-persistent buffers, never in the files,
* anything else: the class's ``mu`` / ``sigma`` buffers (``Wong2020FastNet``, ``Rice2020OverfittingNet``,
  ``Chen2020EfficientNet``, ...); RobustBench loads these files with ``strict=False`` because the files lack
  them.

Files sit where RobustBench's ``load_model(model_dir=...)`` puts them: ``DIR/<dataset>/<threat>/<NAME>.pt``,
e.g. ``models/cifar10/Linf/Wu2020Adversarial.pt``. Their wrapping (``{"state_dict": ...}``, ``module.``,
``model.`` prefixes, ``{"last": ...}``) is undone by :func:`~.files.extract_weights`.
"""
from __future__ import annotations

import difflib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import UserError
from .normalisation import CONVENTIONS

DATASETS = ("cifar10", "cifar100")
THREATS = ("Linf", "L2", "corruptions")
_MU_SIGMA: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "raw": CONVENTIONS["raw"],
    "2x-1": CONVENTIONS["2x-1"],
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # AugMix / PRIME classes: mu = sigma = 0.5
    "c10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),  # Wong2020Fast, Rice2020, Kireev2021, Chen2020
    "rony": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "augustin": ((0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
                 (0.24703225141799082, 0.24348516474564, 0.26158783926049628)),
    "c100-chen": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "c100-wu": ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)),  # also cifar100 Rice2020
}

# (dataset, threat model, RobustBench name, our architecture, normalisation key or "dm", Google Drive id)
_ROWS = """
cifar10 Linf Andriushchenko2020Understanding preact-resnet18-nobn raw 1Uyvprd98bIyxfMjLdCZwm-NEJ-6GMVis
cifar10 Linf Carmon2019Unlabeled wrn-28-10 raw 15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ
cifar10 Linf Sehwag2020Hydra wrn-28-10 raw 1pi8GHwAVkxVH41hEnf0IAJb_7y-Q8a2Y
cifar10 Linf Wang2020Improving wrn-28-10 raw 1T939mU4kXYt5bbvM55aT4fLBvRhyzjiQ
cifar10 Linf Hendrycks2019Using wrn-28-10-nosub 2x-1 1-DcJsYw2dNEOyF9epks2QS7r9nqBDEsw
cifar10 Linf Rice2020Overfitting wrn-34-20-nosub c10 1vC_Twazji7lBjeMQvAD9uEQxi9Nx2oG-
cifar10 Linf Zhang2019Theoretically wrn-34-10 raw 1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_
cifar10 Linf Huang2020Self wrn-34-10 raw 1nInDeIyZe2G-mJFxQJ3UoclQNomWjMgm
cifar10 Linf Wong2020Fast preact-resnet18-nobn c10 1Re--_lf3jCEw9bnQqGkjw3J7v2tSZKrv
cifar10 Linf Zhang2019You wrn-34-10 raw 1kB2qqPQ8qUNmK8VKuTOhT1X4GT46kAoA
cifar10 Linf Zhang2020Attacks wrn-34-10 raw 1lBVvLG6JLXJgQP2gbsTxNHl6s3YAopqk
cifar10 Linf Wu2020Adversarial_extra wrn-28-10 raw 1-WJWpAZLlmc4gJ8XXNf7IETjnSZzaCNp
cifar10 Linf Wu2020Adversarial wrn-34-10-nosub raw 13LBcgNvhFppCFG22i1xATrahFPfMgXGf
cifar10 Linf Gowal2020Uncovering_70_16 dm-wrn-70-16 dm 1DVwKclibqzniE2Ss5_g6BY77ChG8QKzl
cifar10 Linf Gowal2020Uncovering_70_16_extra dm-wrn-70-16 dm 1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ
cifar10 Linf Gowal2020Uncovering_34_20 dm-wrn-34-20 dm 1YWvZO1u9_yNLFNC3JYd_TVkvrRSMER1O
cifar10 Linf Gowal2020Uncovering_28_10_extra dm-wrn-28-10 dm 1MBAWGxiZxKt-GfqEqtLcXcd3tAxPhvV2
cifar10 Linf Sehwag2021Proxy wrn-34-10-nosub raw 1QFA5fPMj2Qw4aYNG33PkFqiv_RTDWvzm
cifar10 Linf Sehwag2021Proxy_R18 resnet18 raw 1-ZgoSlD_AMhtXdnUElilxVXnzK2DcHuu
cifar10 Linf Sitawarin2020Improving wrn-34-10 raw 12teknvo6dQGSWBaGnbNFwFO3-Y8j2eB6
cifar10 Linf Chen2020Efficient wrn-34-10 c10 1c5EXpd3Kn_s6qQIbkLX3tTOOPC8VslHg
cifar10 Linf Cui2020Learnable_34_20 wrn-34-20 raw 1y7BUxPhQjNlb4w4BUlDyYJIS4w4fsGiS
cifar10 Linf Cui2020Learnable_34_10 wrn-34-10 raw 16s9pi_1QgMbFLISVvaVUiNfCzah6g2YV
cifar10 Linf Zhang2020Geometry wrn-28-10 raw 1UoG1JhbAps1MdMc6PEFiZ2yVXl_Ii5Jk
cifar10 Linf Rebuffi2021Fixing_28_10_cutmix_ddpm dm-wrn-28-10 dm 1-0EChXbc6pOvx26O17av263bCeqIAz6s
cifar10 Linf Rebuffi2021Fixing_106_16_cutmix_ddpm dm-wrn-106-16 dm 1-4qnkveIkeWoGdF72kpEFHETiY3y4_tF
cifar10 Linf Rebuffi2021Fixing_70_16_cutmix_ddpm dm-wrn-70-16 dm 1-8CWRT-OFWyrz4T4s0I2mbFjPg8K_MUi
cifar10 Linf Rebuffi2021Fixing_70_16_cutmix_extra dm-wrn-70-16 dm 1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg
cifar10 Linf Sridhar2021Robust wrn-28-10 raw 1muDMpOyRlgJ7n2rhS2NpfFGp3rzjuIu0
cifar10 Linf Sridhar2021Robust_34_15 wrn-34-15 raw 1-3ii3GX93YqIcmJ3VNsOgYA7ecdnSZ0Z
cifar10 Linf Rade2021Helper_extra dm-wrn-34-10 dm 1GhAp-0C3ONRy9BxIe0J9vKc082vHvR7t
cifar10 Linf Rade2021Helper_ddpm dm-wrn-28-10 dm 1AOF6LxnwgS5fCz_lVLYqs_wnUYuv6O7z
cifar10 Linf Addepalli2021Towards_RN18 resnet18 raw 1-1DxecXz5U_xZ54DVdE-GVm71Tiox-Ri
cifar10 Linf Addepalli2021Towards_WRN34 wrn-34-10 raw 1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB
cifar10 Linf Gowal2021Improving_70_16_ddpm_100m dm-wrn-70-16 dm 10qBoDG_NomJBrRFeTsSwEcJF1GA-sjC4
cifar10 Linf Gowal2021Improving_28_10_ddpm_100m dm-wrn-28-10 dm 12L8YE6VBgUDKyW6GMSNefSYj2gg4LEKx
cifar10 Linf Chen2021LTD_WRN34_10 wrn-34-10-nosub raw 1-0RoQKYvHLNh7hZ71wJjSit1XtrJQo9D
cifar10 Linf Chen2021LTD_WRN34_20 wrn-34-20-nosub raw 1-5JmY9rapuGwCUc2nPvy7Rb_sn_dHhFm
cifar10 Linf Standard wrn-28-10-nosub raw 1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC
cifar10 Linf Jia2022LAS-AT_34_10 wrn-34-10-nosub raw 1-3l7xKhIPyes3O4QSz0HU6L-hfOoS0xD
cifar10 Linf Jia2022LAS-AT_70_16 wrn-70-16-nosub raw 1-4p-Gr0hjl8wq6qvvTza4x4a5Rmu-Bfr
cifar10 Linf Pang2022Robustness_WRN28_10 dm-wrn-28-10 dm 16ChNkterCp17BXv-xxqpfedb4u2_CjjS
cifar10 Linf Pang2022Robustness_WRN70_16 dm-wrn-70-16 dm 1uQZYUuUiL9BzaQUeXLhjr_RhoyFRrHe3
cifar10 Linf Addepalli2022Efficient_RN18 resnet18 raw 1m5vhdzIUUKhDbsZdOG9z76Eyp6f4xe_f
cifar10 Linf Addepalli2022Efficient_WRN_34_10 wrn-34-10-nosub raw 1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA
cifar10 L2 Rice2020Overfitting preact-resnet18 c10 1jo-31utiYNBVzLM0NxUEWz0teo3Z0xa7
cifar10 L2 Rony2019Decoupling wrn-28-10-nosub rony 1Oua2ZYSxNvoDrtlY9vTtRzyBWHziE4Uy
cifar10 L2 Standard wrn-28-10-nosub raw 1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC
cifar10 L2 Wu2020Adversarial wrn-34-10-nosub raw 1M5AZ0EZQt7d2AlTmsnqZcfx91-x7YEAV
cifar10 L2 Gowal2020Uncovering dm-wrn-70-16 dm 1QL4SNvYydjIg1uI3VP9SyNt-2kTXRisG
cifar10 L2 Gowal2020Uncovering_extra dm-wrn-70-16 dm 1pkZDCpCBShpAnx92n8PUeNOY1fSiTi0s
cifar10 L2 Sehwag2021Proxy wrn-34-10-nosub raw 1UviikNzpltVFsgMuqQ8YhpmvGczGRS4S
cifar10 L2 Sehwag2021Proxy_R18 resnet18 raw 1zPjjZj9wujBNkAmHHHIikem6_aIjMhXG
cifar10 L2 Rebuffi2021Fixing_70_16_cutmix_ddpm dm-wrn-70-16 dm 1-8ECIOYF4JB0ywxJOmhkefnv4TW-KuXp
cifar10 L2 Rebuffi2021Fixing_28_10_cutmix_ddpm dm-wrn-28-10 dm 1-DUKcvfDzeWwt0NK7q2XvU-dIi8up8B0
cifar10 L2 Rebuffi2021Fixing_70_16_cutmix_extra dm-wrn-70-16 dm 1JX82BDVBNO-Ffa2J37EuB8C-aFCbz708
cifar10 L2 Augustin2020Adversarial_34_10 wrn-34-10-nosub augustin 1qPsKS546mKcs71IEhzOS-kLpQFSFhaKL
cifar10 L2 Augustin2020Adversarial_34_10_extra wrn-34-10-nosub augustin 1--1MFZja6C2iVWi9MgetYjnSIenRBLT-
cifar10 corruptions Rebuffi2021Fixing_70_16_cutmix_extra_Linf dm-wrn-70-16 dm 1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg
cifar10 corruptions Rebuffi2021Fixing_70_16_cutmix_extra_L2 dm-wrn-70-16 dm 1JX82BDVBNO-Ffa2J37EuB8C-aFCbz708
cifar10 corruptions Hendrycks2020AugMix_WRN wrn-40-2-nosub half 1wy7gSRsUZzCzj8QhmTbcnwmES_2kkNph
cifar10 corruptions Kireev2021Effectiveness_Gauss50percent preact-resnet18 c10 1zR6lwYLkO3TFSgeqvu_CMYTq_IS-eicQ
cifar10 corruptions Kireev2021Effectiveness_AugMixNoJSD preact-resnet18 c10 1p_1v1Oa-FSrjHTAq63QX4WtLYETkcbdH
cifar10 corruptions Kireev2021Effectiveness_RLAT preact-resnet18 c10 16bCDA_5Rhr6qMKHRAO5W-4nu9_10kFyF
cifar10 corruptions Kireev2021Effectiveness_RLATAugMixNoJSD preact-resnet18 c10 1hgJuvLPSVQMbUczn8qnIphONlJePsWgU
cifar10 corruptions Kireev2021Effectiveness_RLATAugMix preact-resnet18 c10 19HNTdqJiuNyqFqIarPejniJEjZ3RQ_nj
cifar10 corruptions Standard wrn-28-10-nosub raw 1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC
cifar10 corruptions Addepalli2021Towards_WRN34 wrn-34-10 raw 1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB
cifar10 corruptions Modas2021PRIMEResNet18 resnet18 half 13oDyqi16FeXy5j4Vm6IghnjTVqp_XF5U
cifar10 corruptions Addepalli2022Efficient_WRN_34_10 wrn-34-10-nosub raw 1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA
cifar100 Linf Gowal2020Uncovering dm-wrn-70-16 dm 16I86x2Vv_HCRKROC86G4dQKgO3Po5mT3
cifar100 Linf Gowal2020Uncovering_extra dm-wrn-70-16 dm 1LQBdwO2b391mg7VKcP6I0HIOpC6O83gn
cifar100 Linf Cui2020Learnable_34_20_LBGAT6 wrn-34-20 raw 1rN76st8q_32j6Uo8DI5XhcC2cwVhXBwK
cifar100 Linf Cui2020Learnable_34_10_LBGAT0 wrn-34-10 raw 1RnWbGxN-A-ltsfOvulr68U6i2L8ohAJi
cifar100 Linf Cui2020Learnable_34_10_LBGAT6 wrn-34-10 raw 1TfIgvW3BAkL8jL9J7AAWFSLW3SSzJ2AE
cifar100 Linf Chen2020Efficient wrn-34-10 c100-chen 1JEh95fvsfKireoELoVCBxOi12IPGFDUT
cifar100 Linf Wu2020Adversarial wrn-34-10-nosub c100-wu 1yWGvHmrgjtd9vOpV5zVDqZmeGhCgVYq7
cifar100 Linf Sehwag2021Proxy wrn-34-10-nosub raw 1ejMNF2O4xkSdrjtZt2UXUeim-y9F7Req
cifar100 Linf Sitawarin2020Improving wrn-34-10 raw 1hbpwans776KM1SMbOxISkDx0KR0DW8EN
cifar100 Linf Hendrycks2019Using wrn-28-10-nosub 2x-1 1If3tppQsCe5dN8Vbo9ff0tjlKQTTrShd
cifar100 Linf Rice2020Overfitting preact-resnet18 c100-wu 1XXNZn3fZBOkD1aqNL1cvcD8zZDccyAZ6
cifar100 Linf Rebuffi2021Fixing_70_16_cutmix_ddpm dm-wrn-70-16 dm 1-GkVLo9QaRjCJl-by67xda1ySVhYxsLV
cifar100 Linf Rebuffi2021Fixing_28_10_cutmix_ddpm dm-wrn-28-10 dm 1-P7cs82Tj6UVx7Coin3tVurVKYwXWA9p
cifar100 Linf Addepalli2021Towards_PARN18 preact-resnet18 raw 1-FwVya1sDvdFXr0_ZBoXEJW9ukGC7hPK
cifar100 Linf Addepalli2021Towards_WRN34 wrn-34-10 raw 1-9GAld_105-jWBLXL73btmfOCwAqvz7Y
cifar100 Linf Chen2021LTD_WRN34_10 wrn-34-10 raw 1-I4NZyULdEWH46b4EaCTxuuRo4eFXsg_
cifar100 Linf Pang2022Robustness_WRN28_10 dm-wrn-28-10 dm 1VDDM_j5M4b6sZpt1Nnhkr8FER3kjE33M
cifar100 Linf Pang2022Robustness_WRN70_16 dm-wrn-70-16 dm 1F3kn8KIdBVls8QuTWc3BbB83htkQeVQD
cifar100 Linf Jia2022LAS-AT_34_10 wrn-34-10 raw 1-338K2PUf5FTwk4cbUUeTNz247GrXaMG
cifar100 Linf Jia2022LAS-AT_34_20 wrn-34-20-nosub raw 1WhRq01Yl1v8O3skkrGUBuySlptidc5a6
cifar100 Linf Addepalli2022Efficient_RN18 resnet18 raw 1-2hnxC7lZOQDqQbum4yPbtRtTND86I5N
cifar100 Linf Addepalli2022Efficient_WRN_34_10 wrn-34-10-nosub raw 1-3c-iniqNfiwGoGPHC3nSostnG6J9fDt
cifar100 corruptions Gowal2020Uncovering_Linf dm-wrn-70-16 dm 16I86x2Vv_HCRKROC86G4dQKgO3Po5mT3
cifar100 corruptions Gowal2020Uncovering_extra_Linf dm-wrn-70-16 dm 1LQBdwO2b391mg7VKcP6I0HIOpC6O83gn
cifar100 corruptions Hendrycks2020AugMix_WRN wrn-40-2-nosub half 1XpFFdCdU9LcDtcyNfo6_BV1RZHKKkBVE
cifar100 corruptions Addepalli2021Towards_PARN18 preact-resnet18 raw 1-FwVya1sDvdFXr0_ZBoXEJW9ukGC7hPK
cifar100 corruptions Addepalli2021Towards_WRN34 wrn-34-10 raw 1-9GAld_105-jWBLXL73btmfOCwAqvz7Y
cifar100 corruptions Modas2021PRIMEResNet18 resnet18 half 1kcohb2tBuJHa5pGSi4nAkvK-hXPSI6Hr
cifar100 corruptions Addepalli2022Efficient_WRN_34_10 wrn-34-10-nosub raw 1-3c-iniqNfiwGoGPHC3nSostnG6J9fDt
"""


@dataclass(frozen=True)
class RobustBenchEntry:
    """One RobustBench model: ``mean``/``std`` are what its class applies to [0,1] inputs."""

    name: str
    dataset: str
    threat_model: str
    arch: str
    normalisation: str  # a _MU_SIGMA key, or "dm"
    gdrive_id: str

    @property
    def num_classes(self) -> int:
        return 100 if self.dataset == "cifar100" else 10

    @property
    def mean(self) -> List[float]:
        return list(self._stats()[0])

    @property
    def std(self) -> List[float]:
        return list(self._stats()[1])

    def _stats(self):
        if self.normalisation == "dm":  # DMWideResNet(mean=CIFAR10_MEAN / CIFAR100_MEAN, ...)
            return CONVENTIONS["cifar100" if self.dataset == "cifar100" else "cifar10"]
        return _MU_SIGMA[self.normalisation]

    @property
    def url(self) -> str:
        return f"https://drive.google.com/uc?export=download&id={self.gdrive_id}"

    def path(self, model_dir: str | os.PathLike) -> Path:
        return Path(model_dir) / self.dataset / self.threat_model / f"{self.name}.pt"


TABLE: Dict[Tuple[str, str, str], RobustBenchEntry] = {}
for _line in _ROWS.strip().splitlines():
    _ds, _tm, _name, _arch, _norm, _gid = _line.split()
    TABLE[(_ds, _tm, _name)] = RobustBenchEntry(_name, _ds, _tm, _arch, _norm, _gid)


def lookup(name: str, dataset: Optional[str] = None, threat_model: Optional[str] = None) -> RobustBenchEntry:
    """The entry for ``NAME``, ``DATASET/NAME`` or ``DATASET/THREAT/NAME`` (defaults: cifar10, Linf).

    A ``robustbench:`` prefix is ignored; dataset and threat model are case-insensitive.
    """
    spec = name[len("robustbench:"):] if name.lower().startswith("robustbench:") else name
    parts = [p for p in spec.strip().split("/") if p]
    if not parts or len(parts) > 3:
        raise UserError(f"bad RobustBench model name '{name}' (use NAME, DATASET/NAME or DATASET/THREAT/NAME)")
    ds = dataset or (parts[0] if len(parts) >= 2 else "cifar10")
    tm = threat_model or (parts[1] if len(parts) == 3 else "Linf")
    ds = {d.lower(): d for d in DATASETS}.get(str(ds).lower().replace("-", ""), ds)
    tm = {t.lower(): t for t in THREATS}.get(str(tm).lower(), tm)
    if ds not in DATASETS:
        raise UserError(f"RobustBench dataset '{ds}' is not in this table (known: {', '.join(DATASETS)})")
    if tm not in THREATS:
        raise UserError(f"RobustBench threat model '{tm}' is unknown (known: {', '.join(THREATS)})")
    key = (ds, tm, parts[-1])
    if key not in TABLE:
        names = [n for (d, t, n) in TABLE if d == ds and t == tm]
        close = difflib.get_close_matches(parts[-1], names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"RobustBench model {ds}/{tm}/{parts[-1]} is not in infoard-deploy's table (its architecture "
                        f"may not be registered){hint}")
    return TABLE[key]


def entry_for_path(path: Path) -> Optional[RobustBenchEntry]:
    """The entry a file stored in RobustBench's layout (``.../<dataset>/<threat>/<NAME>.pt``) belongs to."""
    p = Path(path)
    return TABLE.get((p.parent.parent.name, p.parent.name, p.stem)) if p.suffix == ".pt" else None


def resolve_robustbench(name: str, model_dir: str | os.PathLike = "models", download: bool = False,
                        dataset: Optional[str] = None, threat_model: Optional[str] = None
                        ) -> Tuple[Path, str, List[float], List[float], str]:
    """``(checkpoint path, our architecture, mean, std, dataset)`` for a RobustBench model name.

    The file is expected at ``model_dir/<dataset>/<threat>/<NAME>.pt`` (RobustBench's layout); when it is
    missing, ``download=True`` fetches it from Google Drive, otherwise a one-line :class:`UserError` says
    exactly where to put it.
    """
    e = lookup(name, dataset, threat_model)
    path = e.path(model_dir)
    if not path.is_file():
        if not download:
            raise UserError(f"RobustBench model {e.name} is not downloaded: put its checkpoint at {path} "
                            f"(Google Drive file {e.gdrive_id}, {e.url}), or pass --download (download=True) to fetch it")
        download_gdrive(e.gdrive_id, path)
    return path, e.arch, e.mean, e.std, e.dataset


_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) infoard-deploy"  # Drive serves a different page to bare clients


def _open(url: str, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - https URL built here


def _confirm_url(html: str, file_id: str) -> Optional[str]:
    """The download URL behind Drive's "cannot scan this file for viruses" page (large files)."""
    action = re.search(r'<form[^>]+action="([^"]+)"', html)
    fields = dict(re.findall(r'<input[^>]+name="([^"]+)"[^>]+value="([^"]*)"', html))
    if action and fields:
        return action.group(1).replace("&amp;", "&") + "?" + urllib.parse.urlencode(fields)
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", html)
    if token:
        return f"https://drive.google.com/uc?export=download&confirm={token.group(1)}&id={file_id}"
    return None


def download_gdrive(file_id: str, dest: Path, timeout: float = 60.0) -> Path:
    """Fetch a public Google Drive file to ``dest`` (atomically), following the large-file confirmation.

    Refuses what is not a model file (Drive answers quota or permission problems with an HTML page).
    """
    from ..utils import atomic_path
    from .files import sniff_format

    dest = Path(dest)
    url = f"https://drive.google.com/uc?export=download&id={file_id}"
    manual = f"download https://drive.google.com/file/d/{file_id} by hand and save it as {dest}"
    try:
        resp = _open(url, timeout)
        if "text/html" in (resp.headers.get("Content-Type") or ""):
            nxt = _confirm_url(resp.read(1 << 20).decode("utf-8", "replace"), file_id)
            resp.close()
            if nxt is None:
                raise UserError(f"Google Drive did not serve file {file_id} (quota or access page); {manual}")
            resp = _open(nxt, timeout)
        with atomic_path(dest) as tmp:
            with resp, open(tmp, "wb") as f:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    f.write(chunk)
            if sniff_format(tmp) is None:
                raise UserError(f"Google Drive returned no checkpoint for file {file_id}; {manual}")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise UserError(f"cannot download Google Drive file {file_id} ({getattr(e, 'reason', e)}); {manual}") from None
    return dest


__all__ = ["RobustBenchEntry", "TABLE", "lookup", "entry_for_path", "resolve_robustbench", "download_gdrive"]
