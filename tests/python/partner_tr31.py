"""The partner's side of the key exchange, with psec (a TR-31 implementation we did not write).

    partner_tr31.py wrap KBPK_HEX HEADER KEY_HEX   -> prints the TR-31 block psec makes
    partner_tr31.py unwrap KBPK_HEX BLOCK          -> prints JSON: key, usage, algorithm,
                                                      mode of use, exportability, version id

Used by tests/tests/t112_partner_exchange.rs: the partner makes its blocks with psec and reads the
bureau's blocks with psec.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore", message=".*TripleDES.*")

from psec import tr31  # noqa: E402


def main(argv):
    if len(argv) == 5 and argv[1] == "wrap":
        print(tr31.wrap(bytes.fromhex(argv[2]), argv[3], bytes.fromhex(argv[4])))
        return 0
    if len(argv) == 4 and argv[1] == "unwrap":
        header, key = tr31.unwrap(bytes.fromhex(argv[2]), argv[3])
        print(json.dumps({
            "key": key.hex().upper(),
            "usage": header.key_usage,
            "algorithm": header.algorithm,
            "mode_of_use": header.mode_of_use,
            "exportability": header.exportability,
            "version_id": header.version_id,
        }))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
