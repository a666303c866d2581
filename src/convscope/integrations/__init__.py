"""convscope inside other training frameworks: a callback for each that writes the same run folder.

    convscope.integrations.lightning.Scope   a Lightning Callback (pip install "convscope[lightning]")
    convscope.integrations.fastai.Scope      a fastai Callback (pip install "convscope[fastai]")

Both drive `convscope.watch` (stats/watch.py) from the framework's hooks, so what a row holds is what
watch() documents, and `convscope report`, `convscope diagnose` and `convscope.load_run` read their runs
unchanged. The frameworks themselves are imported only by the module that needs them.
"""
