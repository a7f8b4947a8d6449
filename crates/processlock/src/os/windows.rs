// Windows OS layer: see issue 5.
