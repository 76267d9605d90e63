"""Plain-Python real-time control logic: action scheduling, chunk blending, safety layer."""
