"""What a model is trained for: one module per task (lm, sft, classify), their shared parts
in base. The trainer calls a task's batch(index), loss(model, batch), evaluate(model, device,
amp) and summary(last metrics); a task's checkpoint_info goes into config.json. base.Task
states exactly that."""
