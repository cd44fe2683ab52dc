"""nanoloom data: tokenizers, corpora, preparation into token shards, and batch loaders.

Import the submodules directly (`from data.tokenizer import get_tokenizer`); this file stays empty so that
importing the tokenizer never pulls in torch.
"""
