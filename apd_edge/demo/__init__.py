"""Camera / video demo: capture thread, overlay drawing, video writer; ``run_demo`` in ``apd_edge.demo.run``."""
