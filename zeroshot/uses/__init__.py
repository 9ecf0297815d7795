"""What is done with the towers' outputs: features scored into records (``ranking``, ``records``,
``clips``), measured (``evaluate``, ``calibration``: accuracy, the multi-label rule), adapted
(``adapt``), written (``output``, ``resume``, ``report``, ``manifest``) and kept as files
(``export``: classifier files). Imports everything below it; ``assembly``, the engines and the CLI
import it."""
