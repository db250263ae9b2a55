"""BibTeX of each model's paper, the one source of the citations `sepkit export --card`
writes (tests/test_export.py checks that README.md's References section holds each entry
verbatim). Keys are registered model names; ``"ssc"`` is the SSC layer's manuscript."""

from __future__ import annotations

BIBTEX: dict[str, str] = {
    "luo2019convtasnet": """\
@article{luo2019convtasnet,
  author  = {Luo, Yi and Mesgarani, Nima},
  title   = {{Conv-TasNet}: Surpassing Ideal Time-Frequency Magnitude Masking for Speech Separation},
  journal = {IEEE/ACM Transactions on Audio, Speech, and Language Processing},
  volume  = {27},
  number  = {8},
  pages   = {1256--1266},
  year    = {2019}
}""",
    "luo2020dprnn": """\
@inproceedings{luo2020dprnn,
  author    = {Luo, Yi and Chen, Zhuo and Yoshioka, Takuya},
  title     = {Dual-Path {RNN}: Efficient Long Sequence Modeling for Time-Domain Single-Channel Speech Separation},
  booktitle = {IEEE International Conference on Acoustics, Speech and Signal Processing (ICASSP)},
  pages     = {46--50},
  year      = {2020}
}""",
    "subakan2021sepformer": """\
@inproceedings{subakan2021sepformer,
  author    = {Subakan, Cem and Ravanelli, Mirco and Cornell, Samuele and Bronzi, Mirko and Zhong, Jianyuan},
  title     = {Attention Is All You Need in Speech Separation},
  booktitle = {IEEE International Conference on Acoustics, Speech and Signal Processing (ICASSP)},
  pages     = {21--25},
  year      = {2021}
}""",
    "tzinis2020sudormrf": """\
@inproceedings{tzinis2020sudormrf,
  author    = {Tzinis, Efthymios and Wang, Zhepei and Smaragdis, Paris},
  title     = {Sudo rm -rf: Efficient Networks for Universal Audio Source Separation},
  booktitle = {IEEE 30th International Workshop on Machine Learning for Signal Processing (MLSP)},
  pages     = {1--6},
  year      = {2020}
}""",
    "hu2021afrcnn": """\
@inproceedings{hu2021afrcnn,
  author    = {Hu, Xiaolin and Li, Kai and Zhang, Weiyi and Luo, Yi and Lemercier, Jean-Marie and Gerkmann, Timo},
  title     = {Speech Separation Using an Asynchronous Fully Recurrent Convolutional Neural Network},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}""",
    "luo2020gc3": """\
@misc{luo2020gc3,
  author = {Luo, Yi and Han, Cong and Mesgarani, Nima},
  title  = {Group Communication with Context Codec for Ultra-Lightweight Source Separation},
  note   = {arXiv:2012.07291; the version sepkit implements. Extended as ``Group Communication
            with Context Codec for Lightweight Source Separation'', IEEE/ACM Transactions on
            Audio, Speech, and Language Processing, vol. 29, pp. 1752--1761, 2021},
  year   = {2020}
}""",
    "luo2020groupcomm": """\
@misc{luo2020groupcomm,
  author = {Luo, Yi and Han, Cong and Mesgarani, Nima},
  title  = {Ultra-Lightweight Speech Separation via Group Communication},
  note   = {arXiv:2011.08397; the group communication module GC3 builds on},
  year   = {2020}
}""",
    "yang2022dprcnet": """\
@misc{yang2022dprcnet,
  author = {Yang, Xue and Bao, Changchun},
  title  = {Embedding Recurrent Layers with Dual-Path Strategy in a Variant of Convolutional
            Network for Speaker-Independent Speech Separation},
  note   = {arXiv:2203.13574},
  year   = {2022}
}""",
    "ssc": """\
@unpublished{ssc,
  author = {Anonymous},
  title  = {{SSC} Layer -- A Replacement for Convolutional Layers},
  note   = {Manuscript under double-blind review}
}""",
}

# Registered model name (or "ssc") -> the BibTeX keys to cite for it, paper first.
CITATIONS: dict[str, tuple[str, ...]] = {
    "conv_tasnet": ("luo2019convtasnet",),
    "dprnn": ("luo2020dprnn",),
    "sepformer": ("subakan2021sepformer",),
    "sudormrf": ("tzinis2020sudormrf",),
    "afrcnn": ("hu2021afrcnn",),
    "gc3": (
        "luo2020gc3",
        "luo2020groupcomm",
    ),
    "dprcnet": ("yang2022dprcnet",),
    "ssc": ("ssc",),
}


def citation(name: str) -> str:
    """The BibTeX entries to cite for model ``name`` (blank-line separated); empty if unknown."""
    return "\n\n".join(BIBTEX[key] for key in CITATIONS.get(name, ()))
