"""The run directory, the contract between training, ensembles, soups and the Hub: its manifest and member records
(`directory.py`), the coordination of the processes that share it (`coordination.py`: main-process writes, member
locks, rendezvous), and loading its members with every check (`members.py`: hashes, configs, pickles, adapters).

May import: `storage`, `adapters`, `errors`.
"""
