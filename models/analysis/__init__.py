"""Analysis over a model or its trace: the logit lens, embedding geometry, the architecture card, timing."""
