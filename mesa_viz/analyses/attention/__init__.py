"""Attention rows past the training length: what ``mesa_viz.trace`` captured
(``[layer, head, q_row, k_pos]``), drawn as rows with ``T`` marked at distance
``q - T`` and as mass by distance (``figures``), explored per method, layer and
head (``explorer``)."""
