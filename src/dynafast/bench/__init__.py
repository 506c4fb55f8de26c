"""The load tool behind `dynafast bench`, kept out of the runtime package's imports.

runner  the closed-loop YCSB-style load, the report and the command's options
targets what the load is sent to: a dynafast cluster or Redis
zipf    YCSB's (scrambled) zipfian key choosers

It needs the `bench` extra (`pip install 'dynafast[bench]'`: hdrhistogram for the latency histograms, tqdm for
the progress bar); of the command's verbs only `dynafast bench` imports it, so the others start without them (and faster). This module imports
nothing: use the modules above.
"""
