"""Corpus recipes: turn the corpora on the user's disk into mixture tables (one row
per mixture) that :mod:`sepkit.data.mixtures` renders, on the fly or into the
official folder layouts. Entry point: ``sepkit prepare`` (:mod:`data_prep.cli`).

==============  ==========================================================  ==================================
recipe          inputs                                                      exactness vs the official files
==============  ==========================================================  ==================================
``wsj0mix``     WSJ0 (WAV tree or .wv1 discs), MERL lists + speech levels   16 kHz: same formula, expected
                                                                            bit-exact; 8 kHz: resample_poly vs
                                                                            MATLAB resample, ~70 dB SNR
``librimix``    LibriSpeech, wham_noise, LibriMix metadata CSVs             exact up to float32 vs float64
                                                                            rounding (rare 1-LSB flips);
                                                                            train-360 noisy mixtures: SoX
                                                                            speed differs, not bit-exact
``wham``        WSJ0, wham_noise (+ scaling npz), speaker lists             same formula and resampler as
                                                                            create_wham_from_scratch.py
``whamr``       WHAM! inputs + reverb_params CSVs, pyroomacoustics          RIRs differ from pyroomacoustics
                                                                            0.3.1 (see data_prep.whamr)
``folder``      any DIR/<speaker>/<utterances>                              (no official data)
==============  ==========================================================  ==================================

Every recipe's outputs are checked in tests/test_data_*.py against a float64
reimplementation of the documented formula on fabricated corpora.
"""
