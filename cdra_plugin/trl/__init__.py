"""The only part of cdra-plugin that imports TRL (``pip install cdra-plugin[trl]``): the Pers-GenPRM gateway as a
``GRPOTrainer`` reward function and CDPA's per-token advantages inside ``GRPOTrainer``.

- ``reward.GatewayReward``: ``reward_funcs=[GatewayReward("http://127.0.0.1:5000/get_reward", tokenizer)]``
  works with TRL's own ``GRPOTrainer`` (the GRPO baseline on R_dense);
- ``trainer.CDPAGRPOTrainer``: the same run with the advantage of Eq. 3 (its options: ``cdpa=`` the
  ``cdra_plugin.cdpa.config.CDPAConfig`` that ``cdra-train`` uses too);
- ``train``: the command ``recipes/train_cdpa_trl.sh`` launches with ``accelerate launch``.

A tiny policy learning through ``CDPAGRPOTrainer`` on a CPU is ``cdra_plugin.demo.learn``.
"""
