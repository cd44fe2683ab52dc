"""nanoloom sampling: pure sampling functions, token/text generators, and a Hugging Face-shaped pipeline.

>>> from sample import pipeline
>>> generator = pipeline("text-generation", model="runs/shakespeare")
>>> generator("Once upon a time,", max_new_tokens=50, seed=0)
"""

from sample.generate import complete, generate_tokens, stream
from sample.pipeline import TextGenerationPipeline, pipeline
from sample.sampling import sample_next

__all__ = ["TextGenerationPipeline", "complete", "generate_tokens", "pipeline", "sample_next", "stream"]
