"""Exit 0 when the installed llama-cpp-python generates with the embedded model.

Run in its own process by ``.ci/run``: a build with unusable processor features
dies with a signal here instead of in the middle of the tests.
"""

import llama_cpp

from llmpo.backends.local import resolve_model_path

model = llama_cpp.Llama(model_path=str(resolve_model_path(None)), n_ctx=256,
                        verbose=False)
reply = model.create_chat_completion(
    messages=[{"role": "user", "content": "Say hello."}], max_tokens=4, seed=1
)
print("llama-cpp-python generates:", repr(reply["choices"][0]["message"]["content"]))
