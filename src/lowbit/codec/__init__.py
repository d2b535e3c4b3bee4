"""Learned image codecs (CompressAI models): architectures, bundled weights, rate-distortion evaluation with
real bitstreams, the JPEG baseline, BD-rate, training, the bitstream file format; fine-tuning a quantized codec is
:func:`lowbit.codec.finetune.finetune_codec`."""

from lowbit.codec.architectures import CODEC_ARCHITECTURES, codec_architecture
from lowbit.codec.bd_rate import bd_rate
from lowbit.codec.rate_distortion import RDResult, evaluate_codec
from lowbit.codec.zoo import BUNDLED, OpenCodec, open_codec, weights_digest

__all__ = ["BUNDLED", "CODEC_ARCHITECTURES", "OpenCodec", "RDResult", "bd_rate", "codec_architecture",
           "evaluate_codec", "open_codec", "weights_digest"]
