// Task statuses in words a person reads, never the protocol's frame names.

export const STATUS_WORDS = {
  task_queue: "Queued",
  task_accept: "Preparing",
  task_preprocess_start: "Preparing",
  task_preprocess_end: "Preparing",
  task_assign: "Starting",
  task_start: "Generating",
  task_output: "Generating",
  task_end: "Saving",
  task_postprocess_start: "Saving",
  task_postprocess_end: "Done",
  task_cancel: "Stopped",
  task_error: "Failed",
};
export const RUNNING = new Set(["task_accept", "task_preprocess_start", "task_preprocess_end", "task_assign",
  "task_start", "task_output", "task_end", "task_postprocess_start"]);

export function statusWord(task) {
  if (task.status === "task_postprocess_end" && task.pexit !== "0") return "Failed";
  if (/moderated/i.test(task.debugerror || "")) return "Moderated";
  return STATUS_WORDS[task.status] || task.status;
}
