"""Runs in the browser: `convscope view` (server.py: a local, read-only server of the runs in some folders,
the page polling them while they train) and `convscope compare` (compare.py: the same page as one
self-contained file). data.py turns a run folder into the page's JSON for both; static/ holds the page;
plotly.min.js comes from the plotly package (the optional extra `convscope[view]`)."""
