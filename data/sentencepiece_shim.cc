// The client of gemma-spm-helper (see sentencepiece_shim.h). No SentencePiece
// header here.
#include "data/sentencepiece_shim.h"

#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

extern char** environ;

namespace gemma {
namespace spm_shim {
namespace {

constexpr char kHelperName[] = "gemma-spm-helper";

std::string FindHelper(std::string* tried) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("GEMMA_SPM_HELPER");
      env != nullptr && *env != '\0') {
    candidates.push_back(env);
  }
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) {
    std::string exe(buf, static_cast<size_t>(n));
    candidates.push_back(exe.substr(0, exe.rfind('/')) + "/" + kHelperName);
  }
#ifdef GEMMA_SPM_HELPER_PATH
  candidates.push_back(GEMMA_SPM_HELPER_PATH);
#endif
  for (const std::string& c : candidates) {
    if (access(c.c_str(), X_OK) == 0) return c;
    *tried += " " + c;
  }
  return "";
}

// One helper process and the socket to it.
class Helper {
 public:
  ~Helper() {
    if (fd_ >= 0) close(fd_);  // the helper sees end of input and exits
    if (pid_ > 0) {
      int status = 0;
      waitpid(pid_, &status, 0);
    }
  }

  bool Start(std::string* error) {
    std::string tried;
    const std::string path = FindHelper(&tried);
    if (path.empty()) {
      *error = std::string(kHelperName) + " not found (tried" + tried +
               "); set GEMMA_SPM_HELPER to its path";
      return false;
    }
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      *error = std::string("socketpair: ") + std::strerror(errno);
      return false;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 0);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    char* argv[] = {const_cast<char*>(path.c_str()), nullptr};
    const int rc =
        posix_spawn(&pid_, path.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    fd_ = fds[0];
    if (rc != 0) {
      pid_ = -1;
      *error = "cannot start " + path + ": " + std::strerror(rc);
      return false;
    }
    return true;
  }

  // Sends one request and reads its response; false with *error on failure.
  bool Call(char op, const std::string& payload, std::string* response,
            std::string* error) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint32_t len = static_cast<uint32_t>(payload.size());
    std::string frame(1, op);
    frame.append(reinterpret_cast<const char*>(&len), 4);
    frame += payload;
    if (!Send(frame.data(), frame.size())) {
      *error = std::string(kHelperName) + " is gone (write failed)";
      return false;
    }
    uint8_t ok = 0;
    uint32_t rlen = 0;
    if (!Recv(&ok, 1) || !Recv(&rlen, 4)) {
      *error = std::string(kHelperName) + " is gone (no response)";
      return false;
    }
    response->assign(rlen, '\0');
    if (rlen > 0 && !Recv(response->data(), rlen)) {
      *error = std::string(kHelperName) + " is gone (short response)";
      return false;
    }
    if (!ok) {
      *error = *response;
      return false;
    }
    return true;
  }

 private:
  bool Send(const char* p, size_t n) {
    while (n > 0) {
      const ssize_t w = send(fd_, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  bool Recv(void* buf, size_t n) {
    auto* p = static_cast<char*>(buf);
    while (n > 0) {
      const ssize_t r = recv(fd_, p, n, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  std::mutex mu_;  // one request at a time on fd_
};

uint32_t GetU32(const std::string& s, size_t* pos) {
  uint32_t v = 0;
  if (*pos + 4 <= s.size()) std::memcpy(&v, s.data() + *pos, 4);
  *pos += 4;
  return v;
}

class RemoteProcessor : public Processor {
 public:
  bool Init(const std::string& model, std::string* error) {
    if (!helper_.Start(error)) return false;
    std::string vocab;
    if (!helper_.Call('L', model, &vocab, error)) return false;
    size_t pos = 0;
    const uint32_t n = GetU32(vocab, &pos);
    pieces_.reserve(n);
    control_.reserve(n);
    for (uint32_t id = 0; id < n; ++id) {
      if (pos + 5 > vocab.size()) {
        *error = "truncated vocabulary from the helper";
        return false;
      }
      control_.push_back(vocab[pos++] & 1);
      const uint32_t len = GetU32(vocab, &pos);
      pieces_.push_back(vocab.substr(pos, len));
      pos += len;
      ids_.emplace(pieces_.back(), static_cast<int>(id));
    }
    return true;
  }

  bool Encode(const std::string& text, std::vector<int>* ids,
              std::vector<int>* begins, std::string* error) const override {
    std::string out;
    if (!helper_.Call('E', text, &out, error)) return false;
    size_t pos = 0;
    const uint32_t n = GetU32(out, &pos);
    if (out.size() != 4 + static_cast<size_t>(n) * 8) {
      *error = "malformed encode response from the helper";
      return false;
    }
    ids->resize(n);
    if (begins != nullptr) begins->resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      int32_t v[2];
      std::memcpy(v, out.data() + 4 + i * 8, 8);
      (*ids)[i] = v[0];
      if (begins != nullptr) (*begins)[i] = v[1];
    }
    return true;
  }

  bool Decode(const std::vector<int>& ids, std::string* text,
              std::string* error) const override {
    std::string payload(ids.size() * 4, '\0');
    if (!ids.empty()) std::memcpy(payload.data(), ids.data(), payload.size());
    return helper_.Call('D', payload, text, error);
  }

  int PieceToId(const std::string& piece) const override {
    const auto it = ids_.find(piece);
    return it == ids_.end() ? -1 : it->second;
  }
  std::string IdToPiece(int id) const override {
    return id >= 0 && id < VocabSize() ? pieces_[static_cast<size_t>(id)]
                                       : std::string();
  }
  int VocabSize() const override { return static_cast<int>(pieces_.size()); }
  bool IsControl(int id) const override {
    return id >= 0 && id < VocabSize() && control_[static_cast<size_t>(id)];
  }

 private:
  mutable Helper helper_;
  std::vector<std::string> pieces_;
  std::vector<bool> control_;
  std::unordered_map<std::string, int> ids_;
};

}  // namespace

std::unique_ptr<Processor> LoadProcessor(const std::string& serialized_model,
                                         std::string* error) {
  auto p = std::make_unique<RemoteProcessor>();
  if (!p->Init(serialized_model, error)) return nullptr;
  return p;
}

bool Train(const std::string& flags, std::string* error) {
  Helper helper;
  if (!helper.Start(error)) return false;
  std::string out;
  return helper.Call('T', flags, &out, error);
}

}  // namespace spm_shim
}  // namespace gemma
