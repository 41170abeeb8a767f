"""Reg2RG pipeline pieces without model code: config, tokenizer, dataset, token cache,
training and generation (the modules are in :mod:`strata.models.reg2rg`)."""
